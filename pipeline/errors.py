"""The one kind of error a user sees as one line: a bad config, a source or model that cannot be
opened, a link that cannot be set up. Anything else is a bug and gets a traceback."""


class UserError(Exception):
    """A problem the user can fix; `str(e)` is the whole message, naming what is wrong and what
    is allowed."""
