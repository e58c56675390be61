"""How a per-member kernel is batched over the ensemble members that the train step vmaps.

PERFORMANCE. A pack of E members is one `jax.vmap` over the member axis. Vmapped like any other op, a kernel
whose working set fits in cache for one member (a member's [B, n] pre-activations before its top-k, the
[rows, K, d] blocks of the sparse gathers and scatter-adds) writes all E members' blocks to memory first and
reads them back: CPU, TopK d 64, 1,024 latents, k 16, B 1,024, the E = 8 step cost 0.67-0.87x the member-rows/s
of E = 1. Run member by member, each member's blocks stay in cache and a member in a pack costs what it costs
alone (experiments/RESULTS.md, "Sweeps"). Only while a member's blocks fit in cache: inside the loop XLA runs
a large matmul on one thread, so the callers choose (`jaxsae.sae.sparse.MEMBER_BY_MEMBER_MAX_BYTES`). On
accelerators the members stay batched: a GPU or TPU wants the larger kernels, not a loop.
"""

from __future__ import annotations

from typing import Callable

import jax


def member_by_member(f: Callable) -> Callable:
    """`f` itself, except that under `jax.vmap` on CPU the batch (the ensemble members) runs as a `lax.map`
    loop: one member at a time, unbatched arguments shared. Elsewhere the vmap batches `f` as usual.
    Differentiate the caller, not `f`: its inputs should be stop-gradient values or it should sit inside a
    custom VJP (custom_vmap functions have no reverse-mode rule of their own)."""
    batched = jax.custom_batching.custom_vmap(f)

    @batched.def_vmap
    def rule(axis_size, in_batched, *args):
        del axis_size
        flags, treedef = jax.tree.flatten(list(in_batched))
        leaves = treedef.flatten_up_to(list(args))

        def one(mapped):
            chosen = iter(mapped)
            return f(*treedef.unflatten([next(chosen) if flag else leaf for flag, leaf in zip(flags, leaves)]))

        mapped = [leaf for flag, leaf in zip(flags, leaves) if flag]
        if jax.default_backend() == "cpu":
            out = jax.lax.map(one, mapped)
        else:
            out = jax.vmap(one)(mapped)
        return out, jax.tree.map(lambda _: True, out)

    return batched
