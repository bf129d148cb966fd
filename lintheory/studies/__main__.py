"""python -m lintheory.studies NAME [--profile P] [--seeds S] [--results DIR] [--cache-dir DIR]
   python -m lintheory.studies --record-wall START [--end END] --profile P --jobs J --cached-models K [--partial]
                               [--results DIR]
   python -m lintheory.studies --stale [--profile P] [--results DIR] [NAME ...]

The second form writes DIR/make_results.json: the wall time of a `make results` that ran from START
to END (seconds since the epoch; END defaults to now), with its profile, the studies run side by side,
the studies it ran and each one's own seconds and seeds, the trained models it found in the cache, the
commits the studies it wrote ran (from their results files), CPU count and load. The same record goes
to DIR/profiles/PROFILE.json, which a run of another profile leaves alone: the report and the README
give each profile's last measured time from those files. --partial marks a run that reran only some
studies (the others were fresh): it writes DIR/make_results.json alone, since PROFILE.json is the time of
a whole run.

The third form prints the stale studies among NAME (default: every study), one per line, on stdout, and
why each is stale on stderr: no results file of the profile, or one whose trainer revision or code digest
differs from the code here (freshness.stale). `make results` reruns what it prints.
"""

import argparse
import sys
import time
from pathlib import Path

from lintheory import studies
from lintheory.run import flags, io, provenance, runtime
from lintheory.studies import engine, freshness


def record_wall(argv) -> int:
  ap = argparse.ArgumentParser(prog="python -m lintheory.studies --record-wall")
  ap.add_argument("--record-wall", type=float, required=True, help="start of the run, seconds since the epoch")
  ap.add_argument("--profile", required=True)
  ap.add_argument("--jobs", type=int, required=True, help="studies run side by side")
  ap.add_argument("--end", type=float, default=None, help="end of the run, seconds since the epoch (default: now)")
  ap.add_argument("--cached-models", type=int, required=True, help="trained models in runs/cache at the start")
  ap.add_argument("--results", default=None, help="the studies' results directory (default: the profile's)")
  ap.add_argument("--partial", action="store_true", help="the run reran only the stale studies: record it in "
                  "DIR/make_results.json only, not as the profile's time")
  args = ap.parse_args(argv)
  args.results = args.results or str(engine.results_dir(args.profile))
  wall = (time.time() if args.end is None else args.end) - args.record_wall
  if not 0 < wall < 30 * 86400 or args.jobs < 1 or args.cached_models < 0:
    print(f"--record-wall must be a start time in the last 30 days, --jobs >= 1 and --cached-models >= 0, got "
          f"{args.record_wall!r}, {args.jobs!r}, {args.cached_models!r}", file=sys.stderr)
    return 2
  if args.profile not in engine.PROFILE_NAMES:
    print(f"--profile must be one of {', '.join(engine.PROFILE_NAMES)}, got {args.profile!r}", file=sys.stderr)
    return 2
  # The commits are the studies' own (each results file records the code it ran), not this process's.
  gits, ran, seconds, seeds = [], [], {}, {}
  for name in studies.STUDIES:
    path = Path(args.results) / f"{name}.json"
    if path.exists() and path.stat().st_mtime >= args.record_wall:
      meta = io.read_json(path)
      if meta.get("profile") != args.profile:
        print(f"{path} holds profile {meta.get('profile')!r}, not --profile {args.profile!r}", file=sys.stderr)
        return 2
      ran.append(name)
      seconds[name], seeds[name] = meta["seconds"], len(meta["seeds"])
      git = meta.get("provenance", {}).get("git")
      if git not in gits:
        gits.append(git)
  if not ran:
    print(f"--record-wall: no results file in {args.results} was written after {args.record_wall!r}", file=sys.stderr)
    return 2
  prov = provenance.collect()
  record = {"profile": args.profile, "jobs": args.jobs, "wall_seconds": wall, "cached_models": args.cached_models,
            "studies": ran, "study_seconds": seconds, "seeds": seeds, "cpu_count": prov.get("cpu_count"),
            "load_avg": provenance.load_avg(), "git": gits, "machine": prov.get("machine"),
            "finished": time.strftime("%Y-%m-%d", time.gmtime(time.time() if args.end is None else args.end)),
            "partial": args.partial}
  io.write_json(f"{args.results}/make_results.json", record)
  if not args.partial:
    io.write_json(engine.results_root(args.results, args.profile) / "profiles" / f"{args.profile}.json", record)
  return 0


def list_stale(argv) -> int:
  ap = argparse.ArgumentParser(prog="python -m lintheory.studies --stale",
                               description="print the stale studies, one per line (why: on stderr)")
  ap.add_argument("--stale", action="store_true", required=True, help="list the stale studies")
  ap.add_argument("names", nargs="*", metavar="NAME",
                  help=f"studies to check (default: all): {', '.join(studies.STUDIES)}")
  ap.add_argument("--profile", choices=engine.PROFILE_NAMES, default="default",
                  help="the profile whose results to check")
  ap.add_argument("--results", default=None, help="directory of the studies' results files (default: the profile's, "
                  "results/ or results/PROFILE/)")
  args = ap.parse_args(argv)
  unknown = [n for n in args.names if n not in studies.STUDIES]
  if unknown:
    print(f"--stale: unknown study {unknown[0]!r}; studies: {', '.join(studies.STUDIES)}", file=sys.stderr)
    return 2
  # a study without this profile (deep_recipes has no long) has no results of it to be stale
  names = [n for n in args.names or studies.STUDIES if args.profile in engine.study_module(n).PROFILES]
  found = freshness.stale(engine.results_of(args), names, args.profile)
  for name, why in found.items():
    print(name)
    print(f"{name} ({args.profile}): stale: {'; '.join(why)}", file=sys.stderr)
  return 0


def overview() -> str:
  """The studies, each with the first line of its docstring, and the flags every study takes."""
  ap = argparse.ArgumentParser(prog="python -m lintheory.studies NAME", add_help=False,
                               usage="python -m lintheory.studies NAME [flags]   (NAME --help: that study's own)")
  flags.add_dataclass_flags(ap.add_argument_group("flags of every study"), engine.Flags)
  width = max(map(len, studies.STUDIES))
  lines = [f"  {name:<{width}}  {(engine.study_module(name).__doc__ or '').strip().splitlines()[0]}"
           for name in studies.STUDIES]
  return (f"{ap.format_usage()}\nstudies:\n" + "\n".join(lines) + "\n\n" + ap.format_help().split("\n\n", 1)[1]
          + "\n`make results` records its wall time with python -m lintheory.studies --record-wall START ...\n"
          + "python -m lintheory.studies --stale [--profile P] [NAME ...] lists the stale studies (make results "
          "reruns them)\n")


def main(argv=None) -> int:
  runtime.configure()  # before JAX's first computation
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] == "--record-wall":
    return record_wall(argv)
  if argv and argv[0] == "--stale":
    return list_stale(argv)
  if argv and argv[0] in ("-h", "--help"):
    print(overview())
    return 0
  if not argv or argv[0] not in studies.STUDIES:
    print(f"usage: python -m lintheory.studies {{{','.join(studies.STUDIES)}}} [flags] "
          "(python -m lintheory.studies --help lists the studies and their flags)", file=sys.stderr)
    return 2
  return engine.main(argv[0], argv[1:])


if __name__ == "__main__":
  sys.exit(main())
