"""Finding one member's dictionary in a sweep folder, by name or by its settings (`jaxsae.load(SWEEP_DIR,
member="k16_lr0.001")`, `jaxsae.load(SWEEP_DIR, k=16, lr=1e-3)`)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from jaxsae.errors import DictionaryError

SWEEP_FILE = "sweep.json"


def is_sweep(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), SWEEP_FILE))


def member_dictionary(sweep_dir: str | os.PathLike, member: str | None = None, **settings: Any) -> str:
    """The dictionary folder of the one member named `member`, or whose axis settings match `settings`: a
    keyword is a setting's last dotted part (k for hparams.k, lr for optim.lr, seed, architecture,
    n_latents, ...); floats compare with a relative tolerance of 1e-9."""
    sweep_dir = os.fspath(sweep_dir)
    with open(os.path.join(sweep_dir, SWEEP_FILE)) as f:
        packs = json.load(f)["plan"]["packs"]
    members = [(name, values, pack["name"], i) for pack in packs
               for i, (name, values) in enumerate(zip(pack["members"], pack["member_settings"]))]
    if member is None and not settings:
        raise DictionaryError(f"{sweep_dir} is a sweep of {len(members)} members; name one (member=...) or give "
                              f"its settings (e.g. k=32, lr=4e-4): {', '.join(m[0] for m in members[:6])}, ...")
    found = [m for m in members if (member is None or m[0] == member) and _matches(m[1], settings)]
    if len(found) != 1:
        what = ", ".join([*([f"member={member!r}"] if member else []), *(f"{k}={v!r}" for k, v in settings.items())])
        listed = ", ".join(m[0] for m in (found or members)[:8])
        raise DictionaryError(f"{sweep_dir}: {len(found)} members match {what} ({'candidates' if found else 'members'}: "
                              f"{listed}); name exactly one")
    _, _, pack, index = found[0]
    return os.path.join(sweep_dir, "packs", pack, "dictionaries", f"member_{index:03d}")


def _matches(values: dict[str, Any], wanted: dict[str, Any]) -> bool:
    by_short = {key.rsplit(".", 1)[-1]: value for key, value in values.items()}
    for key, want in wanted.items():
        if key not in by_short:
            return False
        have = by_short[key]
        if isinstance(want, (int, float)) and isinstance(have, (int, float)) and not isinstance(want, bool):
            if not math.isclose(have, want, rel_tol=1e-9):
                return False
        elif have != want:
            return False
    return True
