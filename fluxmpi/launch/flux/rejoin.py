"""Nodes the flux-jobs path lost, how it knows they are back, and how it gives them work again.

Flux drops a broker whose link stays down past the link timeout, and a dropped broker does not rejoin an
instance bootstrapped by PMI (srun). Measured here (4-node block, one node's link down 25 s, link timeout 10 s,
SlurmdTimeout 10 s): Slurm listed the node `allocated*` (not responding) and, once the link was back, `allocated`
again, still in the block's allocation, while the instance went on with three brokers. So the node is paid for
and idle until the block ends. `LostNodes` tells when such a node is back: Slurm has listed it unusable since
Flux lost it, and now lists it usable. The executor then starts a second Flux instance on it, as a step of the
same Slurm job (`rejoin_step`: `srun --jobid --overlap -w HOST ... flux start`), or, when Slurm took the node
out of the job (a node set DOWN leaves a `--no-kill` job), asks for a top-up block of free nodes.
"""

from __future__ import annotations

import logging
import shlex
import time

from ... import slurm as slurm_client

logger = logging.getLogger(__name__)


class LostNodes:
    """Hosts Flux lost (any block of one executor): which to leave out of new blocks, and which are back.

    rejoin_after: seconds a lost host is left out when Slurm never showed it go and come back (it may not have
    noticed a short outage, or a dead node yet); after that Slurm's word alone decides."""

    def __init__(self, rejoin_after: float):
        self.rejoin_after = rejoin_after
        self.lost_at: dict[str, float] = {}      # host -> when Flux lost it, until it is back
        self.seen_down: set[str] = set()         # hosts of lost_at that Slurm has listed unusable since
        self.returned: dict[str, float] = {}     # host -> when it was seen back in service
        self.away: dict[str, float] = {}         # host -> seconds from Flux losing it to being seen back

    def lose(self, hosts) -> None:
        now = time.time()
        for host in hosts:
            self.lost_at[host] = now
            self.seen_down.discard(host)
            self.returned.pop(host, None)

    def leave_out(self) -> dict[str, str]:
        """{host: why} of the lost hosts new blocks must not ask for yet."""
        now = time.time()
        return {h: f"lost by Flux {now - t:.0f}s ago" for h, t in self.lost_at.items() if now - t < self.rejoin_after}

    def look(self, unusable: dict[str, str]) -> list[str]:
        """Update from Slurm's unusable nodes of the partition (slurm.unusable_nodes); the hosts back since the
        last look: listed unusable since their loss and usable now, or usable once rejoin_after has passed."""
        now, back = time.time(), []
        for host, when in list(self.lost_at.items()):
            if host in unusable:
                self.seen_down.add(host)
            elif host in self.seen_down or now - when >= self.rejoin_after:
                del self.lost_at[host]
                self.seen_down.discard(host)
                self.returned[host], self.away[host] = now, now - when
                back.append(host)
        return sorted(back)

    def is_back(self, host: str) -> bool:
        """Whether `host` came back after it was last lost."""
        return host in self.returned


def rejoin_step(broker_step: list[str], job_id: str, host: str) -> list[str]:
    """The block's broker command (fluxmpi.launch.flux.executor.broker_step, made for one node) as a step of Slurm
    job `job_id` on `host` alone, next to the block's own broker step (--overlap: that step still holds the
    node's CPUs though its broker there is gone)."""
    if not broker_step or broker_step[0] != "srun":
        raise ValueError(f"not an srun broker step: {shlex.join(broker_step)}")
    return ["srun", f"--jobid={job_id}", "--overlap", f"--nodelist={host}", *broker_step[1:]]


def slurm_nodes_of(job_ids: list[str]) -> dict[str, list[str]]:
    """{job id: the hosts its allocation holds now} as squeue lists them (a --no-kill job loses a node Slurm set
    DOWN)."""
    states = slurm_client.job_states(sorted(set(job_ids))) if job_ids else {}
    return {j: slurm_client.expand_hostlist(s.get("nodes", "")) for j, s in states.items()}
