"""Typed errors of the chat layer."""


class ChatRequestError(ValueError):
    """A request (messages, tools, effort) the encoder cannot render.

    `field` names the offending request field, e.g. `messages[2].tool_calls[0]`.
    """

    def __init__(self, field: str, expected: str, found: object):
        self.field = field
        super().__init__(f"{field}: expected {expected}, found {found!r}")
