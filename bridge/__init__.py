"""MQTT presence → Redis state → RabbitMQ transitions and retained statuses."""
