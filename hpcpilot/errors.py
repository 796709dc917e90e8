"""PanDA pilot error codes and the exceptions that carry them.

This module is the one place that knows PanDA's numeric error codes (the same numbers the
server, the monitor and pilot3 use), how a signal maps to a code, how a payload exit code
maps to a code, and what exit status the pilot process returns.  Everything else imports
from here so that a code is never written as a bare number twice.
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ErrorCode(IntEnum):
    """Pilot error codes as PanDA knows them (pilot3 ``errorcodes.py`` numbering)."""

    OK = 0
    GENERALERROR = 1008
    NOLOCALSPACE = 1098
    STAGEINFAILED = 1099
    NOSUCHFILE = 1103
    USERDIRTOOLARGE = 1104
    STDOUTTOOBIG = 1106
    SETUPFAILURE = 1110
    OUTPUTFILETOOLARGE = 1124
    STAGEOUTFAILED = 1137
    PUTMD5MISMATCH = 1141
    PANDAKILL = 1144
    GETMD5MISMATCH = 1145
    LOOPINGJOB = 1150
    STAGEINTIMEOUT = 1151
    STAGEOUTTIMEOUT = 1152
    MISSINGOUTPUTFILE = 1165
    NOVOMSPROXY = 1177
    GETADMISMATCH = 1171
    PUTADMISMATCH = 1172
    LFNTOOLONG = 1190
    ZEROFILESIZE = 1191
    KILLSIGNAL = 1200
    SIGTERM = 1201
    SIGQUIT = 1202
    SIGSEGV = 1203
    SIGXCPU = 1204
    USERKILL = 1205
    SIGBUS = 1206
    SIGUSR1 = 1207
    SIGINT = 1208
    PAYLOADOUTOFMEMORY = 1212
    REACHEDMAXTIME = 1213
    UNKNOWNPAYLOADFAILURE = 1220
    ESRECOVERABLE = 1224
    ESFATAL = 1228
    EXECUTEDCLONEJOB = 1234  # another clone of a runonce/storeonce job ran or stored (hpcpilot.clones)
    PAYLOADEXCEEDMAXMEM = 1235
    ESNOEVENTS = 1238
    MESSAGEHANDLINGFAILURE = 1240
    UNKNOWNEXCEPTION = 1301
    PAYLOADEXECUTIONFAILURE = 1305
    SINGULARITYGENERALFAILURE = 1306  # a container runtime's own failure (hpcpilot.container.failures)
    SINGULARITYNOLOOPDEVICES = 1307
    SINGULARITYBINDPOINTFAILURE = 1308
    SINGULARITYIMAGEMOUNTFAILURE = 1309
    UNKNOWNCHECKSUMTYPE = 1314
    UNKNOWNTRFFAILURE = 1315
    EXCEEDEDMAXWAITTIME = 1317
    COMMUNICATIONFAILURE = 1318
    CONVERSIONFAILURE = 1302
    NOTDEFINED = 1311
    NOTSAMELENGTH = 1312
    INTERNALPILOTPROBLEM = 1319
    SINGULARITYNOTINSTALLED = 1325  # the site's container runtime is not on the node
    SINGULARITYFAILEDUSERNAMESPACE = 1345
    TRANSFORMNOTFOUND = 1346
    EMPTYOUTPUTFILE = 1350
    IMAGENOTFOUND = 1360
    CHECKSUMCALCFAILURE = 1366
    VOMSPROXYABOUTTOEXPIRE = 1370
    BADOUTPUTFILENAME = 1371
    LOGCREATIONTIMEOUT = 1376
    PROXYTOOSHORT = 1382

    @property
    def description(self) -> str:
        """A short human text for logs and diagnostics."""
        return _DESCRIPTIONS.get(self, self.name.lower())


_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.OK: "no error",
    ErrorCode.GENERALERROR: "general pilot error",
    ErrorCode.NOLOCALSPACE: "not enough local space",
    ErrorCode.STAGEINFAILED: "stage-in failed",
    ErrorCode.NOSUCHFILE: "no such file or directory",
    ErrorCode.USERDIRTOOLARGE: "work directory too large",
    ErrorCode.STDOUTTOOBIG: "payload stdout too big",
    ErrorCode.SETUPFAILURE: "payload setup failed",
    ErrorCode.OUTPUTFILETOOLARGE: "output file too large",
    ErrorCode.STAGEOUTFAILED: "stage-out failed",
    ErrorCode.PUTMD5MISMATCH: "md5 mismatch on output",
    ErrorCode.PANDAKILL: "killed by the PanDA server",
    ErrorCode.GETMD5MISMATCH: "md5 mismatch on input",
    ErrorCode.LOOPINGJOB: "looping job killed",
    ErrorCode.STAGEINTIMEOUT: "stage-in timeout",
    ErrorCode.STAGEOUTTIMEOUT: "stage-out timeout",
    ErrorCode.MISSINGOUTPUTFILE: "local output file missing",
    ErrorCode.NOVOMSPROXY: "VOMS proxy not valid",
    ErrorCode.GETADMISMATCH: "adler32 mismatch on input",
    ErrorCode.PUTADMISMATCH: "adler32 mismatch on output",
    ErrorCode.LFNTOOLONG: "LFN longer than 255 characters",
    ErrorCode.ZEROFILESIZE: "zero-size output file",
    ErrorCode.KILLSIGNAL: "killed by a signal",
    ErrorCode.SIGTERM: "killed by SIGTERM",
    ErrorCode.SIGQUIT: "killed by SIGQUIT",
    ErrorCode.SIGSEGV: "killed by SIGSEGV",
    ErrorCode.SIGXCPU: "killed by SIGXCPU",
    ErrorCode.SIGBUS: "killed by SIGBUS",
    ErrorCode.SIGUSR1: "killed by SIGUSR1",
    ErrorCode.SIGINT: "killed by SIGINT",
    ErrorCode.PAYLOADOUTOFMEMORY: "payload ran out of memory",
    ErrorCode.REACHEDMAXTIME: "pilot or batch time limit reached",
    ErrorCode.UNKNOWNPAYLOADFAILURE: "unknown payload failure",
    ErrorCode.EXECUTEDCLONEJOB: "another clone of the job already ran or stored",
    ErrorCode.PAYLOADEXCEEDMAXMEM: "payload exceeded the allowed memory",
    ErrorCode.UNKNOWNEXCEPTION: "unknown pilot exception",
    ErrorCode.PAYLOADEXECUTIONFAILURE: "payload exited with a non-zero code",
    ErrorCode.UNKNOWNCHECKSUMTYPE: "unknown checksum type",
    ErrorCode.UNKNOWNTRFFAILURE: "transform failed with exit code 251 or -1",
    ErrorCode.EXCEEDEDMAXWAITTIME: "no successful server update for too long",
    ErrorCode.COMMUNICATIONFAILURE: "server communication failure",
    ErrorCode.CONVERSIONFAILURE: "a job definition value has the wrong type",
    ErrorCode.NOTDEFINED: "a required job definition field is missing",
    ErrorCode.NOTSAMELENGTH: "per-file job definition lists differ in length",
    ErrorCode.INTERNALPILOTPROBLEM: "internal pilot problem",
    ErrorCode.SINGULARITYGENERALFAILURE: "container runtime failed",
    ErrorCode.SINGULARITYNOLOOPDEVICES: "container runtime found no free loop device",
    ErrorCode.SINGULARITYBINDPOINTFAILURE: "container runtime could not bind a host path",
    ErrorCode.SINGULARITYIMAGEMOUNTFAILURE: "container runtime could not mount the image",
    ErrorCode.SINGULARITYNOTINSTALLED: "container runtime not installed",
    ErrorCode.SINGULARITYFAILEDUSERNAMESPACE: "container runtime could not create a user namespace",
    ErrorCode.IMAGENOTFOUND: "container image not found",
    ErrorCode.TRANSFORMNOTFOUND: "transformation not found",
    ErrorCode.EMPTYOUTPUTFILE: "empty output file",
    ErrorCode.CHECKSUMCALCFAILURE: "checksum calculation failed",
    ErrorCode.VOMSPROXYABOUTTOEXPIRE: "proxy about to expire",
    ErrorCode.BADOUTPUTFILENAME: "file name is not a plain file name",
    ErrorCode.LOGCREATIONTIMEOUT: "log tarball creation timed out",
    ErrorCode.PROXYTOOSHORT: "proxy too short at startup",
}


class PilotError(Exception):
    """An error that fails one job with a PanDA code; the pilot goes on with the next job."""

    def __init__(self, code: ErrorCode, diag: str) -> None:
        super().__init__(f"{code.name} {int(code)}: {diag}")
        self.code = code
        self.diag = diag


class ConfigError(Exception):
    """A bad site configuration or command line; reported as one line, the pilot does not start."""


class JobDefinitionError(PilotError):
    """A job definition the pilot cannot parse; that job fails, the others run."""


# Signals the pilot handles, in the order pilot3 registers them, with their job error codes.
SIGNAL_CODES: dict[signal.Signals, ErrorCode] = {
    signal.SIGTERM: ErrorCode.SIGTERM,
    signal.SIGQUIT: ErrorCode.SIGQUIT,
    signal.SIGSEGV: ErrorCode.SIGSEGV,
    signal.SIGXCPU: ErrorCode.SIGXCPU,
    signal.SIGUSR1: ErrorCode.SIGUSR1,
    signal.SIGBUS: ErrorCode.SIGBUS,
    signal.SIGINT: ErrorCode.SIGINT,
}


def signal_error(signum: int) -> ErrorCode:
    """The job error code for a pilot that was stopped by ``signum``."""
    try:
        return SIGNAL_CODES[signal.Signals(signum)]
    except (ValueError, KeyError):
        return ErrorCode.KILLSIGNAL


def transform_exit_error(exit_code: int) -> ErrorCode:
    """Map a non-zero payload exit code to a pilot error, as pilot3's resolve_transform_error does."""
    if exit_code in (251, -1):
        return ErrorCode.UNKNOWNTRFFAILURE
    return ErrorCode.PAYLOADEXECUTIONFAILURE


def exit_status_for_signal(signum: int) -> int:
    """The shell convention for a process ended by a signal: 128 + signal number."""
    return 128 + int(signum)


# ---- the pilot process's exit status ---------------------------------------------------------

EXIT_OK = 0
"""A normal end, also an orderly wind-down: the walltime guard, the warning signal, a softkill."""
EXIT_CONFIG = 2
"""Bad configuration or an unreadable access point: nothing was started."""
EXIT_OWED = 3
"""The pilot ended with updates the job source has not acknowledged; they stay in the journal
(``hpcpilot deliver`` or the next pilot on the same workdir sends them)."""
EXIT_GAVE_UP = 4
"""The pilot stopped asking a job source that kept failing (``panda.getjob_failures``) or will not
heal (a certificate that does not verify)."""


# Signals that only ever cut a pilot short: never a planned wind-down, even if a site names one as its warning.
CUTTING_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGSEGV, signal.SIGBUS,
                             signal.SIGXCPU, signal.SIGKILL})

EXIT_STATUSES: tuple[tuple[str, str], ...] = (
    ("0", "a normal end, also a wind-down the pilot carried out in order: the walltime guard, the batch "
          "system's warning signal (launcher.warning_signal, USR1), a server softkill"),
    ("2", "bad configuration or an unreadable access point: nothing was started"),
    ("3", "owed: updates the server has not acknowledged are left in the journal (wins over the others)"),
    ("4", "the pilot gave up on its job source (getjob_failures, a certificate that does not verify)"),
    ("128+n", "signal n (TERM, INT, ...) cut the pilot short, and nothing is owed"),
)
"""The exit statuses as ``hpcpilot run --help`` lists them (the README's table says the same)."""


def cutting_signal(received: list[int], warning: int | None) -> int | None:
    """The first signal that cut the pilot short: any but the batch system's warning signal, which asks for
    the same orderly wind-down as the walltime guard (so Slurm shows COMPLETED, not FAILED 138)."""
    for signum in received:
        if signum != warning or signum in CUTTING_SIGNALS:
            return signum
    return None


def pilot_exit_status(signum: int | None, owed: int, gave_up: bool) -> int:
    """The process exit status: anything still owed to the server wins (it needs an operator), then a
    signal that cut the pilot short (128 + n; see :func:`cutting_signal`), then giving up on the source."""
    if owed:
        return EXIT_OWED
    if signum:
        return exit_status_for_signal(signum)
    return EXIT_GAVE_UP if gave_up else EXIT_OK
