"""Batch generation: a prompt file → one MP4 + JSON sidecar per item in an output folder, resumable, sharded.

The pipeline is loaded once per process and reused for every item. Under `torchrun` each rank takes its own
share of the unfinished items (`shard`) on its own device. An item is finished when a manifest record names it
with the same settings and its MP4 and sidecar exist; both are written under temporary names and renamed, and
the record is appended after them, so a killed run leaves nothing that counts as finished by mistake.

Manifest: one JSONL part per rank, `manifest.rank{R}.jsonl`, appended one record per finished item (a single
`write`, then fsync). A part has a single writer, so no lock is needed, which also holds on shared filesystems
where `flock` is unreliable (NFS, Lustre without `-o flock`). Readers take the union of all parts, so a re-run
with another world size resumes from the same set of finished items.

Nothing here prints; progress goes through the `on_item` callback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from .config import GenerateConfig, PruneConfig, check_field_types

PROMPT_FIELDS = ("prompt", "negative", "seed", "image", "overrides")
# a line may change the generation's shape and the pruning, not what the once-loaded pipeline fixes (model,
# device, dtype)
GENERATE_OVERRIDES = ("steps", "frames", "height", "width", "guidance", "fps")
PRUNE_OVERRIDES = tuple(f.name for f in fields(PruneConfig))
# settings that do not change the video, left out of an item's key so a resume may move to other hardware
UNKEYED_SETTINGS = ("device", "out")
MANIFEST_GLOB = "manifest.rank*.jsonl"
MAX_REPORTED_ERRORS = 10  # a long list of bad lines is cut so the message stays one readable line

ConfigBuilder = Callable[[dict, dict], tuple[GenerateConfig, PruneConfig, str | None]]
T = TypeVar("T")


@dataclass(frozen=True)
class BatchItem:
    index: int  # position among the file's prompts, from 0; names the outputs
    line: int  # line number in the prompt file, for messages
    gen: GenerateConfig
    prune: PruneConfig
    preset: str | None
    causal: object | None = None  # a causal.config.CausalConfig: generated chunk by chunk (--causal)

    @property
    def name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.gen.prompt.lower()).strip("-")[:40].rstrip("-")
        return f"{self.index:04d}-{slug or 'prompt'}"

    @property
    def key(self) -> str:
        """Fingerprint of everything that determines the video: a changed line is not the finished item."""
        settings = {k: v for k, v in asdict(self.gen).items() if k not in UNKEYED_SETTINGS} | asdict(self.prune)
        if self.causal is not None:  # the key of a bidirectional item stays what it was before causal items existed
            settings["causal"] = asdict(self.causal)
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- prompt file


def read_prompt_file(path: Path, build: ConfigBuilder) -> list[BatchItem]:
    """Items of a prompt file; raises ValueError naming every malformed line (by number) before any compute.

    Plain text: one prompt per line. JSONL (when the first prompt line starts with `{`): one object per line
    with `prompt` and optionally `negative`, `seed`, `image` (image-to-video: a path relative to the prompt file's
    folder, or absolute) and `overrides` (generate and prune settings). Blank lines and lines starting with `#`
    are skipped; a UTF-8 byte-order mark and CRLF line ends are read as plain UTF-8. `build(generate_flags,
    prune_flags)` makes an item's configs (and checks them: seed range, ...).
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark would hide the first line's `{`
    except OSError as error:
        raise ValueError(f"cannot read prompt file {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"prompt file {path} is not UTF-8 text (byte {error.start})") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"prompt file {path} has no prompts")
    jsonl = lines[0][1].startswith("{")
    items, errors = [], []
    for index, (number, line) in enumerate(lines):
        try:
            entry = _parse_json_line(line) if jsonl else {"prompt": line}
            generate_flags, prune_flags = _line_flags(entry, Path(path).parent)
            items.append(BatchItem(index, number, *build(generate_flags, prune_flags)))
        except ValueError as error:
            errors.append((number, str(error)))
    _raise_line_errors(f"prompt file {path}", errors)
    return items


def _parse_json_line(line: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _line_flags(entry: dict, folder: Path) -> tuple[dict, dict]:
    """A prompt-file entry as (generate, prune) settings, each value type-checked against its config's default; an
    `image` path is taken relative to the prompt file's `folder` unless absolute."""
    unknown = sorted(set(entry) - set(PROMPT_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {', '.join(unknown)} (allowed: {', '.join(PROMPT_FIELDS)})")
    if not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        raise ValueError('needs a non-empty "prompt" string')
    overrides = entry.get("overrides", {})
    if not isinstance(overrides, dict):
        raise ValueError('"overrides" must be an object')
    if not isinstance(entry.get("negative", ""), str):
        raise ValueError(f'"negative" must be a string, got {json.dumps(entry["negative"])}')
    generate_flags = {"prompt": entry["prompt"]}
    generate_flags |= {"negative_prompt": entry["negative"]} if "negative" in entry else {}
    generate_flags |= {"seed": entry["seed"]} if "seed" in entry else {}
    if "image" in entry:
        if not isinstance(entry["image"], str) or not entry["image"]:
            raise ValueError('"image" must be a path string')
        generate_flags["image"] = folder / Path(entry["image"]).expanduser()  # an absolute path stays as it is
    prune_flags = {}
    for key, value in overrides.items():
        if key not in GENERATE_OVERRIDES + PRUNE_OVERRIDES:
            allowed = ", ".join(GENERATE_OVERRIDES + PRUNE_OVERRIDES)
            raise ValueError(f"unknown override {key!r} (allowed: {allowed})")
        (generate_flags if key in GENERATE_OVERRIDES else prune_flags)[key] = value
    check_field_types(GenerateConfig, generate_flags)
    check_field_types(PruneConfig, prune_flags)
    return generate_flags, prune_flags


def _raise_line_errors(where: str, errors: list[tuple[int, str]]) -> None:
    """One message for all bad lines; lines sharing a message (a bad flag fails every line) are listed together."""
    if not errors:
        return
    lines_by_message: dict[str, list[int]] = {}
    for number, message in errors:
        lines_by_message.setdefault(message, []).append(number)
    shown = [
        f"line{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}: {message}"
        for message, numbers in list(lines_by_message.items())[:MAX_REPORTED_ERRORS]
    ]
    more = len(lines_by_message) - MAX_REPORTED_ERRORS
    raise ValueError(f"{where}: {'; '.join(shown)}{f'; and {more} more' if more > 0 else ''}")


def check_items(items: Sequence[BatchItem], check: Callable[[BatchItem], None]) -> None:
    """Refuse, before any compute, the items `check` raises ValueError for (a family's input rule, a budget out of
    reach, a router for another model), all of them in one message with their line numbers."""
    errors = []
    for item in items:
        try:
            check(item)
        except ValueError as error:
            errors.append((item.line, str(error)))
    _raise_line_errors("prompt file", errors)


# ---------------------------------------------------------------- manifest


class Manifest:
    """The finished items of an output folder: the union of every rank's `manifest.rank{R}.jsonl`."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)

    def records(self) -> list[dict]:
        """Every complete record; a torn last line (a run killed mid-write) is not a record."""
        records = []
        for part in sorted(self.out_dir.glob(MANIFEST_GLOB)):
            for line in part.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and {"name", "key", "video", "sidecar"} <= record.keys():
                    records.append(record)
        return records

    def check_same_run(self, items: Sequence[BatchItem]) -> None:
        """Refuse (ValueError) a folder whose records name these items with other settings: resuming there would
        mix two runs' videos under one manifest."""
        keys = {item.name: item.key for item in items}
        changed = sorted({r["name"] for r in self.records() if r["name"] in keys and r["key"] != keys[r["name"]]})
        if changed:
            raise ValueError(
                f"{self.out_dir} holds {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} made with "
                "another prompt or settings; use a new --out-dir"
            )

    def finished(self, items: Sequence[BatchItem]) -> set[str]:
        """Names of the items with a matching record whose MP4 and sidecar exist (temporary files never count)."""
        keys = {item.name: item.key for item in items}
        return {
            r["name"]
            for r in self.records()
            if keys.get(r["name"]) == r["key"]
            and (self.out_dir / r["video"]).is_file()
            and (self.out_dir / r["sidecar"]).is_file()
        }

    def part(self, rank: int) -> Path:
        return self.out_dir / f"manifest.rank{rank}.jsonl"

    def append(self, record: dict, rank: int) -> None:
        """Add one record to this rank's part: one `write` of one line, then fsync, so a kill loses at most the
        record being written (and the item is redone), never an earlier one."""
        part = self.part(rank)
        line = json.dumps(record, default=str) + "\n"
        if _ends_mid_line(part):
            line = "\n" + line  # a torn line from a killed run must not swallow this record
        descriptor = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line.encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _ends_mid_line(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) != b"\n"


# ---------------------------------------------------------------- the out-dir lock

LOCK_GLOB = ".vidprune.rank*.lock"
GUARD_FILE = ".vidprune.lock"
# what flock raises on a filesystem that cannot lock (Lustre without -o flock, some FUSE mounts)
NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutDirLock:
    """This process's claim on an output folder, so that two live runs never redo each other's items.

    Each rank holds an exclusive flock on `.vidprune.rank{R}.lock`, whose text names its PID, host and job; the
    kernel drops an flock when its process dies, so the file of a killed run is simply taken over. A run is refused
    when its own rank's file is held, or when any other rank's file is held by another job (the ranks of one torchrun
    job share the folder). Checks and claims happen under a short flock on `.vidprune.lock`, so a reader never sees
    a claim half written. On a filesystem without flock the run goes on unlocked (`locked` is False)."""

    def __init__(self, out_dir: Path, world: World):
        self.out_dir, self.world = Path(out_dir), world
        self.locked, self._unlockable = False, False
        self._descriptor: int | None = None

    def acquire(self) -> OutDirLock:
        """Claim the folder (creating it), once; ValueError naming the holder's PID when another live run has it."""
        import fcntl

        if self._descriptor is not None or self._unlockable:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        own_path = self.out_dir / f".vidprune.rank{self.world.rank}.lock"
        me = {"pid": os.getpid(), "host": socket.gethostname(), "job": _job_id(self.world), "rank": self.world.rank}
        guard = os.open(self.out_dir / GUARD_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(guard, fcntl.LOCK_EX)  # blocking, but only held for the checks below: milliseconds
            except OSError as error:
                if error.errno in NO_LOCKING:
                    self._unlockable = True
                    return self
                raise
            self._descriptor = os.open(own_path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_flock(self._descriptor):
                self._refuse(_holder(self._descriptor))
            for path in sorted(self.out_dir.glob(LOCK_GLOB)):
                if path != own_path:
                    self._check_other(path, me["job"])
            os.ftruncate(self._descriptor, 0)
            os.pwrite(self._descriptor, json.dumps(me).encode(), 0)
            self.locked = True
            return self
        finally:
            os.close(guard)

    def _check_other(self, path: Path, job: str) -> None:
        descriptor = os.open(path, os.O_RDWR)  # NFS emulates flock with write locks, which need a writable file
        try:
            if _try_flock(descriptor):
                return  # nobody holds it: a finished or killed run's file (closing it drops the flock again)
            holder = _holder(descriptor)
            if holder.get("job") != job:
                self._refuse(holder)
        finally:
            os.close(descriptor)

    def _refuse(self, holder: dict) -> None:
        self.release()
        host = holder.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        raise ValueError(f"--out-dir {self.out_dir} is in use by another vidprune run (PID {holder.get('pid', '?')}"
                         f"{where}); wait for it to finish or use another --out-dir")

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # drops the flock; the file stays for the next run to take
            self._descriptor, self.locked = None, False

    def __enter__(self) -> OutDirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_flock(descriptor: int) -> bool:
    import fcntl

    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(descriptor: int) -> dict:
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _job_id(world: World) -> str:
    """One process alone is its own job; torchrun's ranks share the rendezvous id and the master's address, which no
    other live job can also have."""
    if world.size == 1:
        return f"{socket.gethostname()}:{os.getpid()}"
    return "torchrun:" + ":".join(os.environ.get(name, "") for name in
                                  ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))


# ---------------------------------------------------------------- ranks


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        try:
            world = cls(*(int(os.environ.get(name, default)) for name, default in
                          (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))))
        except ValueError as error:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({error})") from None
        if not 0 <= world.rank < world.size:
            raise ValueError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}")
        return world

    def device(self, requested: str) -> str:
        """`cuda` means this rank's GPU, cuda:LOCAL_RANK, when there are several ranks."""
        if self.size == 1 or not requested.startswith("cuda"):
            return requested
        if requested != "cuda":
            raise ValueError(
                f"--device {requested} would put all {self.size} ranks on one GPU; "
                "pass --device cuda and each rank takes cuda:LOCAL_RANK"
            )
        return f"cuda:{self.local_rank}"


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank `rank`'s share: every `world_size`-th item from position `rank`. Over ranks 0..world_size−1 the shares
    partition `items` (each item in exactly one) and their lengths differ by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return list(items[rank::world_size])


def _agreed_finished(manifest: Manifest, items: Sequence[BatchItem], world: World, device: str) -> set[str]:
    """The finished set as rank 0 reads it, so every rank shards the same pending list even if a rank starts
    late or sees a stale shared filesystem. The process group lives only for this exchange: items take unequal
    time, and a collective at the end would trip the group's timeout while the slowest rank still works."""
    if world.size == 1:
        return manifest.finished(items)
    import torch
    import torch.distributed as dist

    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.set_device(device)
    # env:// reads torchrun's MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE
    dist.init_process_group(backend="nccl" if gpu else "gloo", device_id=torch.device(device) if gpu else None)
    try:
        shared = [sorted(manifest.finished(items)) if world.rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        dist.barrier()  # nobody tears the group down while another rank is still receiving
    finally:
        dist.destroy_process_group()
    return set(shared[0])


# ---------------------------------------------------------------- running


@dataclass
class BatchSummary:
    rank: int
    world_size: int
    out_dir: str
    items: int  # in the prompt file
    finished_before: int  # skipped: finished by an earlier run
    assigned: int  # this rank's share of the rest
    generated: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"name", "error"}

    def to_dict(self) -> dict:
        return asdict(self)


ItemCallback = Callable[[BatchItem, dict | None, Exception | None], None]


def run_batch(
    pipe, items: Sequence[BatchItem], out_dir: Path, world: World, on_item: ItemCallback | None = None
) -> BatchSummary:
    """Generate this rank's share of the unfinished items into `out_dir`; an item that fails is reported through
    `on_item(item, None, error)` and left unfinished (a re-run retries it) while the others go on."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir)
    finished = _agreed_finished(manifest, items, world, items[0].gen.device)
    mine = shard([item for item in items if item.name not in finished], world.rank, world.size)
    summary = BatchSummary(world.rank, world.size, str(out_dir), len(items), len(finished), len(mine))
    for item in mine:
        try:
            record = _generate_item(pipe, item, out_dir, world)
        except Exception as error:  # noqa: BLE001 - one bad item must not cost the rest of the batch
            summary.failed.append({"name": item.name, "error": f"{type(error).__name__}: {error}"})
            if on_item:
                on_item(item, None, error)
            continue
        manifest.append(record, world.rank)
        summary.generated.append(item.name)
        if on_item:
            on_item(item, record, None)
    return summary


def _generate_item(pipe, item: BatchItem, out_dir: Path, world: World) -> dict:
    video = out_dir / f"{item.name}.mp4"
    batch_fields = {"index": item.index, "line": item.line, "name": item.name, "key": item.key}
    write = _write_whole if item.causal is None else _write_causal
    result = write(pipe, item, video, {"batch": batch_fields})
    return batch_fields | {
        "video": video.name,
        "sidecar": video.with_suffix(".json").name,
        "prompt": item.gen.prompt,
        "seed": item.gen.seed,
        "method": item.prune.method,
        "reduction": item.prune.reduction,
        "kept_fraction": result.kept_fraction,
        "total_s": result.total_s,
        "rank": world.rank,
        "world_size": world.size,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": os.uname().nodename,
    }


def _write_whole(pipe, item: BatchItem, video: Path, extra: dict):
    """One pipeline call, then the MP4 and its sidecar; returns the GenerationResult."""
    from .engine import generate, sidecar
    from .outputs import write_video_with_sidecar

    result = generate(pipe, item.gen, item.prune)
    write_video_with_sidecar(result.frames, video, item.gen.fps, sidecar(item.gen, item.prune, result, item.preset)
                             | extra)
    return result


def _write_causal(pipe, item: BatchItem, video: Path, extra: dict):
    """Chunk by chunk, streamed into the MP4 (`causal.video`); returns the CausalResult."""
    from .causal.video import write_causal_video

    return write_causal_video(pipe, item.gen, item.prune, item.causal, video, item.preset, extra)[0]
