"""Starting and stopping local services (Redis, RabbitMQ, FerretDB, Mosquitto, amqtt) and `make run`."""
