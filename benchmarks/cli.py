"""The command line every benchmark shares: its flags (``--sources``, ``--steps``, ``--profile``,
``--results``) and its run — build the fixtures, start Ray, measure while sampling the machine's
load, print the results section and write it into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.fixtures import Fixtures, build_fixtures
from benchmarks.machine import OBJECT_STORE_BYTES, local_ray, machine_info
from benchmarks.profiles import INPAINT_STEPS, PROFILES, SOURCES, Profile
from benchmarks.results import update_results
from benchmarks.sampling import under_load

R = TypeVar("R")


class BenchCommand:
    """One benchmark's ``main()``: flags are added in the order ``--help`` lists them, then
    :meth:`parse` (which adds ``--results`` last) and :meth:`run`."""

    def __init__(self, doc: str, section: str | None = None, *, whole_doc: bool = False,
                 epilog: str | None = None) -> None:
        self.section = section
        self.parser = argparse.ArgumentParser(description=doc if whole_doc else doc.split("\n\n")[0],
                                              formatter_class=argparse.RawDescriptionHelpFormatter,
                                              epilog=epilog)
        self.add = self.parser.add_argument
        self.error = self.parser.error

    def sources(self, default: int = SOURCES, help: str = "selected sources to generate from") -> None:
        self.add("--sources", type=int, default=default, help=help)

    def steps(self, default: int = INPAINT_STEPS, help: str = "inpainting steps") -> None:
        self.add("--steps", type=int, default=default, help=help)

    def profile(self) -> None:
        self.add("--profile", choices=sorted(PROFILES), default="cpu", help="stage sizing")

    def parse(self, argv: list[str] | None, *, results: Path | None = None,
              results_help: str = "RESULTS.md to update (default: ours)") -> argparse.Namespace:
        self.add("--results", type=Path, default=results, help=results_help)
        return self.parser.parse_args(argv)

    def run(self, args: argparse.Namespace, measure: Callable[[Fixtures | None], R],
            report: Callable[[R, dict[str, Any], list[float]], str], *, ray: Profile | None = None,
            object_store_memory: int | None = OBJECT_STORE_BYTES, fixtures: bool = True,
            echo: bool = True) -> R:
        """``measure(fixtures)`` (with a local Ray sized by ``ray``, unless None) while sampling the
        load; then ``report``'s section is printed (``echo``) and written to ``args.results``."""
        fx = build_fixtures() if fixtures else None
        with local_ray(ray, object_store_memory) if ray is not None else nullcontext():
            result, load = under_load(lambda: measure(fx))
        text = report(result, machine_info(), load)
        if echo:
            print(text)
        update_results(self.section, text, **({"path": args.results} if args.results else {}))
        return result


def pipeline_main(doc: str, section: str, argv: list[str] | None, measure: Callable[..., R],
                  report: Callable[[R, dict[str, Any], list[float]], str], *, sources: int = SOURCES,
                  sources_help: str = "selected sources to generate from") -> R:
    """The ``main()`` of a pipeline benchmark whose flags are ``--sources --steps --profile
    --results``: ``measure(fx, n_sources=, profile=, inpaint_steps=)`` on a local Ray."""
    cli = BenchCommand(doc, section)
    cli.sources(sources, sources_help)
    cli.steps()
    cli.profile()
    args = cli.parse(argv)
    profile = PROFILES[args.profile]
    return cli.run(args, lambda fx: measure(fx, n_sources=args.sources, profile=profile,
                                            inpaint_steps=args.steps), report, ray=profile)
