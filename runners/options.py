"""Building a runner from its name and options (flags or the grid file's ``runner:``
block), with errors that name the option and list the valid ones."""
from __future__ import annotations

import difflib
import inspect
from typing import Any

from kdbench.grid import GridError
from kdbench.registry import RUNNERS


def runner_options(cls: type) -> list[str]:
    """The keyword options a runner class takes (besides ``keep_failed``)."""
    params = inspect.signature(cls.__init__).parameters
    return [n for n in params if n not in ("self", "keep_failed") and
            params[n].kind in (params[n].KEYWORD_ONLY, params[n].POSITIONAL_OR_KEYWORD)]


def runner_from_options(name: str, options: dict[str, Any], keep_failed: bool = False) -> Any:
    """``RUNNERS.get(name)(keep_failed=…, **options)``; an unknown option or a bad value is
    a :class:`GridError` saying which runner takes which options."""
    cls = RUNNERS.get(name)
    valid = runner_options(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        flags = ", ".join("--" + u.replace("_", "-") for u in unknown)
        others = [n for n in RUNNERS.list() if n != name and set(unknown) <= set(runner_options(RUNNERS.get(n)))]
        close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.6)
        hint = f" (an option of the {' and '.join(others)} runner: add --runner {others[0]})" if others else \
            (f" (did you mean {close[0]}?)" if close else "")
        raise GridError(f"the {name} runner has no option {flags}{hint}; it takes: "
                        f"{', '.join(valid) or 'no options'}")
    try:
        return cls(keep_failed=keep_failed, **options)
    except (TypeError, ValueError) as exc:
        raise GridError(f"runner {name}: {exc}") from None
