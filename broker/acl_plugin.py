"""amqtt topic ACL (`broker.topic_rules`) and the same publish ACL applied to last wills."""

import logging
from dataclasses import dataclass

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from broker.topic_rules import TopicAcl

logger = logging.getLogger(__name__)


class TopicAclPlugin(BaseTopicPlugin):
    """Publish, subscribe and receive checks with Mosquitto's `%u` semantics."""

    @dataclass
    class Config:
        platform_user: str = "platform"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config: TopicAclPlugin.Config = self.config
        self.acl = TopicAcl(config.platform_user)

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or not topic:
            return False
        username = session.username
        if action == Action.PUBLISH:
            allowed = self.acl.may_publish(username, topic)
        elif action == Action.SUBSCRIBE:
            allowed = self.acl.may_subscribe(username, topic)
        elif action == Action.RECEIVE:
            allowed = self.acl.may_receive(username, topic)
        else:
            allowed = False
        if not allowed:
            logger.info("ACL denied %s on %r to %r (%r)", action, topic, session.client_id, username)
        return allowed


class WillAclPlugin(BaseAuthPlugin):
    """Drops a last will whose topic the publish ACL forbids, as Mosquitto does; no say on the login.

    amqtt 0.12.1 publishes (and retains) a will without asking the topic plugins, so the check has
    to happen at CONNECT, the one hook that runs before the will can fire. Mosquitto also accepts
    the connection and silently discards such a will when it would be sent.
    """

    @dataclass
    class Config:
        platform_user: str = "platform"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config: WillAclPlugin.Config = self.config
        self.acl = TopicAcl(config.platform_user)

    async def authenticate(self, *, session: Session) -> bool | None:
        topic = session.will_topic
        if session.will_flag and (topic is None or not self.acl.may_publish(session.username, topic)):
            logger.warning("dropped the last will of %r on forbidden topic %r", session.client_id, topic)
            session.will_flag = False
            session.will_topic = None
            session.will_message = None
            session.will_retain = False
        return None  # amqtt ignores None: the password plugin alone decides the login
