"""The `memwatch` command: `run` (cluster controller), `agent` (node agent), `lint` (manifests),
`status` (where each watched pod stands) and `explain` (why a pod is watched, and with what); the
last two also as the kubectl plugin `kubectl-memwatch`."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from memwatch import __version__

if TYPE_CHECKING:
    from memwatch.settings import Option, Settings

# `memwatch lint` starts fast: it imports neither the settings nor anything of the controller's.
LINT_HELP = "validate memwatch annotations and policies in Kubernetes manifests"
LINT_DESCRIPTION = ("Print the resolved policy of every annotated pod or pod template, and a summary of every "
                    "MemwatchPolicy and ClusterMemwatchPolicy, or a precise error. "
                    "Exit 0 when all are valid, 1 otherwise.")


def _lint_arguments(lint: argparse.ArgumentParser) -> argparse.ArgumentParser:
    lint.add_argument("files", nargs="+", metavar="FILE", help="YAML or JSON manifests ('-' for stdin)")
    return lint


def _parser(env: Mapping[str, str], prog: str = "memwatch") -> argparse.ArgumentParser:
    from memwatch import explain, status
    from memwatch.settings import AGENT, COMMON, RUN, add_options

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evict Kubernetes pods that pass their memory-watch limit (memwatch.io/limit), "
                    "before the kernel OOM killer fires.")
    parser.add_argument("--version", action="version", version=f"memwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = _HelpFormatter

    def options(p: argparse.ArgumentParser, table: Sequence[Option]) -> None:
        add_options(p, table, env)

    run = sub.add_parser("run", formatter_class=fmt, help="run the cluster controller",
                         description="Watch annotated pods cluster-wide, read their memory once per sweep "
                                     "(metrics API or kubelet), and evict or delete those over their limit.")
    options(run, COMMON)
    options(run, RUN)
    agent = sub.add_parser("agent", formatter_class=fmt, help="run the node agent (sub-second, one per node)",
                           description="Watch the annotated pods on this node, read their cgroups every "
                                       "--sample-period, and act before the kernel OOM killer does.")
    options(agent, [o for o in COMMON])
    options(agent, AGENT)
    _lint_arguments(sub.add_parser("lint", help=LINT_HELP, description=LINT_DESCRIPTION))
    status.add_arguments(sub.add_parser("status", formatter_class=fmt, help=status.HELP,
                                        description=status.DESCRIPTION, epilog=status.EPILOG), env)
    explain.add_arguments(sub.add_parser("explain", formatter_class=fmt, help=explain.HELP,
                                         description=explain.DESCRIPTION, epilog=explain.EPILOG), env)
    return parser


# The loggers that speak on every liveness probe (every 10 s in each pod): aiohttp's access log
# and kopf's probe activity. At INFO they bury the action= lines in `kubectl logs`; a failing
# probe is logged at ERROR by kopf and still shows.
PROBE_LOGGERS = ("aiohttp.access", "kopf.activities.probe")
# kopf's logger for the failure of one of its own tasks (its API discovery, its watchers), which
# ends its run: memwatch.handlers.run restarts it and says so in a line of its own.
KOPF_TASK_FAILURES = "kopf._core.reactor.running"


def _logging(verbose: bool, log_format: str = "text") -> None:
    """Configure the process's logging: kopf's one-line text (the default), or JSON lines
    (``--log-format json``, :mod:`memwatch.logformat`) for every logger, kopf's own included."""
    import kopf

    from memwatch import logformat

    if log_format not in logformat.LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: choose from {', '.join(logformat.LOG_FORMATS)}")
    root = logging.getLogger()
    logformat.drop_json(root)
    before = set(root.handlers)
    # kopf.configure sets the root level and quiets asyncio, in both formats; it also installs its
    # stderr text handler, which JSON mode replaces (kopf.run does not configure logging again).
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.PLAIN if os.environ.get("MEMWATCH_PLAIN_LOGS")
                   else kopf.LogFormat.FULL)
    if log_format == logformat.JSON:
        logformat.use_json(root, replace=[h for h in root.handlers if h not in before])
    elif not verbose:
        # kopf logs the failure of one of its tasks with the traceback of its internals; the error's
        # text is in the message, and memwatch's own line on restarting kopf follows it.
        for h in root.handlers:
            if h not in before:
                h.addFilter(logformat.NoTraceback(KOPF_TASK_FAILURES))
    logging.getLogger("memwatch").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    for name in PROBE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def _serve(settings: Settings, engine: object) -> int:
    """Run an engine under kopf: CLI loop, logging, liveness, signals."""
    import memwatch.handlers  # registers the handlers

    # kopf derives an identity from the login name by default, which a non-root container uid
    # without a passwd entry does not have: give it the pod's name instead.
    identity: Any = settings.pod_name or socket.gethostname()  # kopf's Identity is a NewType of str
    policy_handlers = engine.__class__.__name__ == "Controller"
    if policy_handlers:
        from memwatch import policyhandlers

        policyhandlers.register()
    # The policy handlers watch MemwatchPolicies where memwatch watches pods (a namespaced install
    # may read them only there) and ClusterMemwatchPolicies cluster-wide, as kopf does for cluster kinds.
    return memwatch.handlers.run(engine, namespaces=list(settings.namespaces), liveness=settings.liveness or None,
                                 identity=identity, policy_handlers=policy_handlers)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one: not "(default: None)" or "(default: False)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, prog: str = "memwatch") -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["lint"]:
        from memwatch import lint

        parser = _lint_arguments(argparse.ArgumentParser(prog=f"{prog} lint", description=LINT_DESCRIPTION))
        return lint.main(parser.parse_args(words[1:]).files)
    env = os.environ if env is None else env
    if words[:1] == ["status"]:  # a person's command: its own parser, one-line errors
        from memwatch import status

        return status.main(words[1:], env, prog=f"{prog} status", formatter_class=_HelpFormatter)
    if words[:1] == ["explain"]:
        from memwatch import explain

        return explain.main(words[1:], env, prog=f"{prog} explain", formatter_class=_HelpFormatter)
    from memwatch.settings import Settings

    parser = _parser(env, prog)
    args = parser.parse_args(words)
    if args.command == "lint":  # options before the command word
        from memwatch import lint

        return lint.main(args.files)
    if args.command == "status":
        from memwatch import status

        return status.execute(args, env, prog=f"{prog} status")
    if args.command == "explain":
        from memwatch import explain

        return explain.execute(args, env, prog=f"{prog} explain")
    try:
        settings = Settings.from_args(args, env)
    except ValueError as exc:
        parser.error(str(exc))
    _logging(settings.verbose, settings.log_format)
    log = logging.getLogger("memwatch")
    try:
        if args.command == "run":
            from memwatch.controller import Controller

            engine: object = Controller(settings)
        else:
            from memwatch.agent import Agent

            if not settings.node_name:
                parser.error("memwatch agent needs --node-name or $NODE_NAME (the downward API's spec.nodeName)")
            engine = Agent(settings)
    except Exception as exc:  # config errors: say what is wrong, exit non-zero, start nothing
        log.error("cannot start: %s", exc)
        return 1
    return _serve(settings, engine)


def kubectl_main() -> int:
    """`kubectl-memwatch`, the kubectl plugin: `kubectl memwatch status` runs `memwatch status`,
    `kubectl memwatch explain` runs `memwatch explain`."""
    return main(prog="kubectl memwatch")


if __name__ == "__main__":
    sys.exit(main())
