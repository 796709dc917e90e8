"""Launchers: small strategy objects that turn a command into the argv that starts it on N ranks.

A launcher only builds a list of strings; it never runs anything, so it can be asserted on in tests and
``shlex.join``-ed into a batch script (``hpcpilot.slurm.render_sbatch``).  The shell shims in the
top-level ``launchers/`` directory are thin wrappers for people who start the pilot by hand; the logic
lives here.  The site config picks a launcher by name (``launcher.kind``), see :func:`launcher_for`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from hpcpilot.config import SiteConfig
from hpcpilot.errors import ConfigError


def _check(command: Sequence[str], nodes: int, ranks_per_node: int) -> None:
    if not command:
        raise ConfigError("launcher: empty command")
    if nodes < 1 or ranks_per_node < 1:
        raise ConfigError(f"launcher: nodes and ranks_per_node must be >= 1, "
                          f"got {nodes} and {ranks_per_node}")


class Launcher(ABC):
    """Builds the argv that runs ``command`` as ``nodes * ranks_per_node`` ranks."""

    def __init__(self, executable: str, extra: Sequence[str] = ()) -> None:
        self.executable = executable
        self.extra = list(extra)

    @abstractmethod
    def __call__(self, command: list[str], nodes: int, ranks_per_node: int) -> list[str]:
        """The full argv: launcher prefix, then ``command`` unchanged."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(executable={self.executable!r}, extra={self.extra!r})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]


class SrunLauncher(Launcher):
    """``srun --mpi=<plugin> --nodes=N --ntasks=N*R --ntasks-per-node=R [extra] command``.

    ``mpi`` is Slurm's MPI plugin for the MPI library the pilot's mpi4py uses: ``pmi2`` for MPICH
    (the pip wheel, MVAPICH, Intel MPI), ``pmix`` for Open MPI, ``cray_shasta`` for Cray MPICH on HPE
    Cray systems.  ``mpi=""`` leaves the choice to the site's ``MpiDefault``.
    """

    def __init__(self, mpi: str = "pmi2", extra: Sequence[str] = (), executable: str = "srun") -> None:
        super().__init__(executable, extra)
        self.mpi = mpi

    def __call__(self, command: list[str], nodes: int, ranks_per_node: int) -> list[str]:
        _check(command, nodes, ranks_per_node)
        argv = [self.executable]
        if self.mpi:
            argv.append(f"--mpi={self.mpi}")
        argv += [f"--nodes={nodes}", f"--ntasks={nodes * ranks_per_node}",
                 f"--ntasks-per-node={ranks_per_node}"]
        return argv + self.extra + list(command)

    def __repr__(self) -> str:
        return f"SrunLauncher(mpi={self.mpi!r}, extra={self.extra!r}, executable={self.executable!r})"


class MpiexecLauncher(Launcher):
    """MPICH Hydra: ``mpiexec -n N*R -ppn R [extra] command`` (also Intel MPI and MVAPICH's Hydra)."""

    def __init__(self, extra: Sequence[str] = (), executable: str = "mpiexec") -> None:
        super().__init__(executable, extra)

    def __call__(self, command: list[str], nodes: int, ranks_per_node: int) -> list[str]:
        _check(command, nodes, ranks_per_node)
        return [self.executable, "-n", str(nodes * ranks_per_node), "-ppn", str(ranks_per_node),
                *self.extra, *command]


class MpirunLauncher(Launcher):
    """Open MPI: ``mpirun -np N*R --map-by ppr:R:node [extra] command``."""

    def __init__(self, extra: Sequence[str] = (), executable: str = "mpirun") -> None:
        super().__init__(executable, extra)

    def __call__(self, command: list[str], nodes: int, ranks_per_node: int) -> list[str]:
        _check(command, nodes, ranks_per_node)
        return [self.executable, "-np", str(nodes * ranks_per_node), "--map-by", f"ppr:{ranks_per_node}:node",
                *self.extra, *command]


class LocalLauncher(Launcher):
    """One rank, no launcher: the command itself (a laptop, a test).  More than one rank is refused."""

    def __init__(self, extra: Sequence[str] = ()) -> None:
        super().__init__("", extra)

    def __call__(self, command: list[str], nodes: int, ranks_per_node: int) -> list[str]:
        _check(command, nodes, ranks_per_node)
        if nodes * ranks_per_node != 1:
            raise ConfigError(f"launcher 'local' runs one rank, but nodes x ranks_per_node = "
                              f"{nodes} x {ranks_per_node}; use kind = \"mpiexec\" or \"srun\"")
        return [*self.extra, *command]

    def __repr__(self) -> str:
        return f"LocalLauncher(extra={self.extra!r})"


def launcher_for(config: SiteConfig) -> Launcher:
    """The launcher named by ``config.launcher.kind``, with the site's ``mpi`` and ``extra_options``."""
    lc = config.launcher
    extra = list(lc.extra_options)
    if lc.kind == "srun":
        return SrunLauncher(mpi=lc.mpi, extra=extra)
    if lc.kind == "mpiexec":
        return MpiexecLauncher(extra=extra)
    if lc.kind == "mpirun":
        return MpirunLauncher(extra=extra)
    if lc.kind == "local":
        return LocalLauncher(extra=extra)
    raise ConfigError(f"{config.source}: key 'launcher.kind': unknown launcher {lc.kind!r}")


def launch_argv(config: SiteConfig, command: list[str]) -> list[str]:
    """``command`` prefixed by the site's launcher, for the site's nodes and ranks per node."""
    return launcher_for(config)(command, config.launcher.nodes, config.launcher.ranks_per_node)
