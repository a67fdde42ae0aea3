"""RunAborted: how an engine stops a whole run that cannot usefully go on (exit status 3).

It lives with the engines because they are what detect it (lamini.engines.http_guards.Breaker),
and every layer above (the run core, the command line) may import it from here.
"""

from __future__ import annotations

import re

_ABORT_TEXT = re.compile(r"RunAborted: (.+)")


class RunAborted(RuntimeError):
    """The run cannot usefully go on (the teacher is unreachable, rejects the key, does not know
    the model, or fails too many requests): stop it with this one-line reason, exit status 3.

    Raised inside a Ray worker it reaches the driver wrapped by Ray (Ray Data adds its own
    layers); `find` digs it out of such a chain so the user sees the reason, not the wrapping.
    """

    @staticmethod
    def find(exc: BaseException) -> "RunAborted | None":
        """The RunAborted in `exc`'s chain (Ray's `.cause`, `__cause__`, `__context__`), or None."""
        seen: set[int] = set()
        todo: list[BaseException] = [exc]
        while todo:
            e = todo.pop()
            if id(e) in seen:
                continue
            seen.add(id(e))
            # Exactly our class: Ray's RayTaskError subclasses the class it wraps, with other args.
            if type(e) is RunAborted:
                return e
            todo += [x for x in (getattr(e, "cause", None), e.__cause__, e.__context__) if isinstance(x, BaseException)]
        m = _ABORT_TEXT.search(str(exc))  # a wrapping that kept only the text
        return RunAborted(m.group(1).strip()) if m else None
