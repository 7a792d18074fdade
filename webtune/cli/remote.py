"""DVC remote storage: point the project at S3, and pull a commit's data and adapters all-or-nothing.

    python -m webtune.cli.remote use-s3 s3://bucket/prefix [--endpoint URL] [--region R] [--profile NAME]
    python -m webtune.cli.remote pull [--remote NAME] [--force] [TARGET ...]

`use-s3` only runs `dvc remote` commands (it prints each one), so what it writes is plain DVC config:
the bucket, endpoint and region go to `.dvc/config` (commit it: the team shares the remote), the AWS
profile to the git-ignored `.dvc/config.local` (it is per person). It never takes credentials: dvc-s3
reads them from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws,
instance roles) or from `dvc remote modify --local`, so no key can reach a tracked file or a log.

`pull` exists because of what `dvc pull` does with a corrupted remote object (dvc 3.67). With
`verify = true` DVC re-hashes each download and drops an object whose md5 is wrong, which is right, but
it still counts it as fetched, its error names only the output ("Checkout failed for following targets:
models/adapter ... Is your cache up to date?") and, by then, it has removed that output's previous
files from the workspace. Here DVC's own fetch runs first, then every object the commit needs is looked
up in the cache; a missing one is named (workspace path and remote URL) and nothing is checked out, so
the workspace keeps what it had. Only a complete fetch goes on to `dvc checkout`.
"""

import argparse
import os
import posixpath
import re
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

# Bucket names per S3's rules: 3-63 lowercase letters, digits, dots and hyphens.
_S3_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class RemoteError(ValueError):
    """A remote configuration that cannot work, said before DVC writes any of it."""


def s3_remote_commands(url: str, *, name: str = "s3", endpoint: str | None = None,
                       region: str | None = None, profile: str | None = None) -> list[list[str]]:
    """The `dvc` argument lists that make `url` the project's default remote, `verify` on."""
    if not _S3_URL.match(url):
        raise RemoteError(f"{url!r} is not an S3 URL: expected s3://<bucket>/<prefix>, "
                          "the bucket 3-63 lowercase letters, digits, dots or hyphens")
    commands = [["remote", "add", "--force", name, url],
                # Re-hash every download: a corrupted object is refused instead of reaching the workspace.
                ["remote", "modify", name, "verify", "true"]]
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"endpoint {endpoint!r} must be an http(s) URL, e.g. https://minio.example.com:9000")
        if parts.username or parts.password:
            raise RemoteError("the endpoint URL carries credentials: give them through the AWS environment "
                              "or `dvc remote modify --local`, never in a URL that lands in .dvc/config")
        commands.append(["remote", "modify", name, "endpointurl", endpoint])
    if region:
        commands.append(["remote", "modify", name, "region", region])
    if profile:
        commands.append(["remote", "modify", "--local", name, "profile", profile])
    commands.append(["remote", "default", name])
    return commands


def plaintext_warning(endpoint: str | None) -> str | None:
    """A warning when data and signed requests would cross a network unencrypted."""
    if endpoint and urlsplit(endpoint).scheme == "http" and urlsplit(endpoint).hostname not in _LOOPBACK:
        return f"warning: {endpoint} is plain http: data and request signatures travel unencrypted"
    return None


@dataclass(frozen=True)
class Missing:
    """An object the checked-out commit needs that is not in the local cache after a fetch."""

    path: str  # where it goes in the workspace, e.g. models/adapter/adapter_model.safetensors
    md5: str
    url: str  # where the remote keeps it
    on_remote: bool  # there but not fetched: it failed DVC's md5 check, so the remote copy is corrupted
    listing_url: str | None = None  # the remote .dir object of the folder output it belongs to

    def describe(self) -> str:
        why = (f"corrupted on the remote: its content does not hash to {self.md5}" if self.on_remote
               else "not on the remote: push it from a clone whose cache has it")
        return f"  {self.path}\n    {self.url}\n    {why}"


def repair_advice(missing: list[Missing]) -> str:
    """How to replace corrupted remote objects, listing exactly what to delete."""
    bad = [m for m in missing if m.on_remote]
    if not bad:
        return ""
    # DVC takes a folder whose .dir listing is on the remote as fully pushed and skips its files, so a
    # re-push only replaces a file once its folder's listing is gone too.
    urls = sorted({m.url for m in bad} | {m.listing_url for m in bad if m.listing_url})
    return ("To repair: delete these objects from the remote, then run `dvc push` from a clone whose cache "
            "holds good copies (DVC re-uploads only what the remote lacks):\n"
            + "\n".join(f"  {u}" for u in urls))


def missing_objects(repo, targets: list[str], remote: str | None) -> list[Missing]:
    """Every object that `targets` (all outputs when empty) need and the local cache lacks, named."""
    from dvc_data.hashfile.tree import Tree

    needed = {hash_info.value for objs in repo.used_objs(targets=targets or None, remote=remote).values()
              for hash_info in objs}
    cache = repo.cache.local
    absent = sorted(md5 for md5 in needed if not cache.exists(md5))
    if not absent:
        return []

    names: dict[str, tuple[str, str | None]] = {}  # md5 -> (workspace path, md5 of its folder's listing)
    for out in repo.index.outs:
        if not (out.use_cache and out.hash_info and out.hash_info.value):
            continue
        root = os.path.relpath(out.fs_path, repo.root_dir)
        listing = out.hash_info.value if out.hash_info.isdir else None
        names[out.hash_info.value] = (root + "/ (the folder's file list)" if listing else root, None)
        if listing and cache.exists(listing):
            for key, _, file_hash in Tree.load(cache, out.hash_info):
                names.setdefault(file_hash.value, (posixpath.join(root, *key), listing))
    odb = repo.cloud.get_remote_odb(remote, "pull")

    def url(md5: str) -> str:
        return odb.fs.unstrip_protocol(odb.oid_to_path(md5))

    missing = []
    for md5 in absent:
        path, listing = names.get(md5, ("?", None))
        missing.append(Missing(path=path, md5=md5, url=url(md5), on_remote=odb.exists(md5),
                               listing_url=url(listing) if listing else None))
    return missing


def pull(targets: list[str], remote: str | None = None, force: bool = False, jobs: int | None = None) -> int:
    """`dvc fetch`, then `dvc checkout` only if every needed object arrived intact. Returns an exit status."""
    from dvc.cli import main as dvc
    from dvc.repo import Repo

    options = (["--remote", remote] if remote else []) + (["--jobs", str(jobs)] if jobs else [])
    status = dvc(["fetch", *options, *targets])
    if status != 0:
        print("pull: the fetch failed (above); nothing in the workspace was changed", file=sys.stderr)
        return status
    with Repo() as repo:
        missing = missing_objects(repo, targets, remote)
    if missing:
        print(f"pull: {len(missing)} object(s) this commit needs did not arrive intact, so nothing was "
              "checked out and the workspace keeps its previous files:", file=sys.stderr)
        print("\n".join(m.describe() for m in missing), file=sys.stderr)
        if advice := repair_advice(missing):
            print(advice, file=sys.stderr)
        return 1
    return dvc(["checkout", *(["--force"] if force else []), *targets])


def use_s3(url: str, **options) -> int:
    from dvc.cli import main as dvc

    try:
        commands = s3_remote_commands(url, **options)
    except RemoteError as error:
        print(f"use-s3: {error}", file=sys.stderr)
        return 2
    if warning := plaintext_warning(options.get("endpoint")):
        print(warning, file=sys.stderr)
    for args in commands:
        print("$ dvc " + " ".join(args), flush=True)
        if status := dvc(args):
            return status
    print("Commit .dvc/config to share the remote. Credentials come from the AWS environment/profile or "
          f"`dvc remote modify --local {options.get('name', 's3')} access_key_id ...` (git-ignored).")
    return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    s3 = commands.add_parser("use-s3", help="make an S3 (or S3-compatible) bucket the default DVC remote")
    s3.add_argument("url", help="s3://bucket/prefix")
    s3.add_argument("--name", default="s3", help="the remote's name in .dvc/config")
    s3.add_argument("--endpoint", help="endpoint URL of an S3-compatible store (MinIO, R2, Ceph...)")
    s3.add_argument("--region", help="the bucket's region, e.g. eu-west-1")
    s3.add_argument("--profile", help="AWS profile to sign with (saved in the git-ignored .dvc/config.local)")
    get = commands.add_parser("pull", help="dvc fetch, then dvc checkout only if every object arrived intact")
    get.add_argument("targets", nargs="*", help="outputs or stages (default: all)")
    get.add_argument("-r", "--remote", help="remote name (default: the project's default remote)")
    get.add_argument("-j", "--jobs", type=int, help="parallel downloads (DVC's default when unset)")
    get.add_argument("-f", "--force", action="store_true",
                     help="let checkout overwrite modified workspace files")
    args = parser.parse_args(argv)
    if args.command == "use-s3":
        sys.exit(use_s3(args.url, name=args.name, endpoint=args.endpoint, region=args.region,
                        profile=args.profile))
    sys.exit(pull(args.targets, remote=args.remote, force=args.force, jobs=args.jobs))


if __name__ == "__main__":
    main()
