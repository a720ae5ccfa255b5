"""A crash-consistency model of the output root, fed by the system calls of a real process.

What a power loss may leave is not what a SIGKILL leaves: the kernel has not yet written what was not
fsynced, and it writes it in any order. This module records every file operation a real commit makes (strace,
so the bytes that pyarrow's C++ writer threads put down are seen too), replays them on an in-memory file
system that separates what is durable from what is only in the page cache, and lists the states a power loss
may leave at each point of the sequence, as ALICE (Pillai et al., OSDI 2014) and SQLite's crash-test VFS do.

    rec = record(code, root, cwd=REPO, python=sys.executable)  # strace a Python snippet writing under root
    rec.self_test()                                      # the replayed bytes equal the files on disk
    for point in crash_points(rec.events, rec):          # after each operation
        for label, state in point.model.states():        # the distinct trees a power loss may leave then
            ...                                          # state: relative path -> bytes (DIR: a folder)

A snippet may call mark("label") (MARK_CODE) to cut the recording into segments (`Recording.segments`),
so that one process (one set of imports) records several commands.

The file-system model (conservative, as ALICE's: no ext4 data=ordered, no "rename after write" heuristics):
- Inodes. A file has durable bytes (what survives) and volatile bytes (what a reader sees now); write, pwrite,
  writev, truncate and O_TRUNC change the volatile bytes; fsync/fdatasync of a descriptor make them durable.
  sync_file_range makes nothing durable (it writes no metadata). A new file's durable bytes are empty.
- Folders. Every namespace change (create, mkdir, link, unlink, rmdir, rename) is a pending operation on
  one or two folder slots (folder, name) until an fsync of the folder it changed makes it durable; an fsync
  of a *file* never makes its own entry durable (fsync(2)). A rename is one operation on two slots: it
  persists whole or not at all (ext4, XFS and btrfs journal it as one change), and only an fsync of its
  destination folder makes it durable (the conservative reading: the source folder's fsync alone promises
  nothing about the new name). sync/syncfs make everything durable.
- Which subsets of pending operations may persist: any subset closed under dependencies (operations on one
  slot persist in order; an rmdir, or a rename over a folder, needs every earlier removal from that folder).
  Anything else would be a tree no file system can produce (an entry inside a folder already removed).
- Crash states at a point: everything (the SIGKILL state); only what is durable; each pending operation
  alone absent (the others present) and alone present (the others absent, with and without unsynced file
  contents); and each file whose bytes are not durable left as its durable bytes, empty, half written,
  full length with a zeroed tail (ext4 writeback: size persisted, data not) or whole, alone and all at once.
  `states()` yields each distinct tree once.

The recorder: `strace -f -qq -xx -y -s BIG -e trace=<file syscalls>` on the process; operations are ordered by
their completion line (`<unfinished ...>` / `<... resumed>` are joined); a descriptor is resolved through the
path strace prints for it (`-y`, so threads sharing descriptors need no fork bookkeeping) and a table of open
descriptors (offsets, O_APPEND, dup) checked against it. Writes through a shared writable mmap, in-kernel
copies (copy_file_range, sendfile), symlinks, RENAME_EXCHANGE and renames of files never seen written into
the root are refused (RecorderError), never silently dropped; `Recording.self_test` checks that the replayed
volatile tree equals the output root on disk after the run.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterator

SYSCALLS = ("open,openat,creat,write,pwrite64,writev,pwritev,pwritev2,lseek,ftruncate,truncate,fallocate,"
            "rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,rmdir,link,linkat,symlink,symlinkat,"
            "fsync,fdatasync,sync_file_range,syncfs,sync,close,dup,dup2,dup3,fcntl,copy_file_range,sendfile,"
            "mmap")
STRING_LIMIT = 1 << 26  # strace -s: longer buffers would be cut (and refused by the parser)
DIR = None  # in a tree dict, a folder
MARK = "/crash-model-mark/"  # the recorded process opens MARK + label (which fails) to start a segment
MARK_CODE = ("def mark(label):\n    try:\n        open('" + MARK + "' + label)\n    except OSError:\n"
             "        pass\n")  # paste into recorded code; call mark("label") before each segment


class RecorderError(RuntimeError):
    """The trace holds something the model cannot replay faithfully."""


# ----------------------------------------------------------------------------------------------- recording

def tree(root: str) -> dict[str, bytes | None]:
    """Relative path -> bytes (files) or DIR (folders) under `root` (symlinks are not expected)."""
    out = {}
    for base, dirs, files in os.walk(root):
        rel = os.path.relpath(base, root)
        for name in dirs:
            out[os.path.normpath(os.path.join(rel, name))] = DIR
        for name in files:
            with open(os.path.join(base, name), "rb") as f:
                out[os.path.normpath(os.path.join(rel, name))] = f.read()
    return out


def write_tree(root: str, state: dict[str, bytes | None]) -> None:
    """Materialize a tree dict under `root` (an existing empty folder)."""
    for rel in sorted(state, key=lambda p: p.count("/")):
        path = os.path.join(root, rel)
        if state[rel] is DIR:
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(state[rel])


@dataclass
class Recording:
    """One recorded process: the output root's tree before and after, and its file operations under it."""

    root: str
    initial: dict
    final: dict
    events: list  # Event, in completion order, only those that touch the root
    cwd: str = "/"
    stdout: str = ""

    def replay(self, events: list | None = None) -> "Model":
        model = Model(self.root, self.initial, self.cwd)
        for event in self.events if events is None else events:
            model.apply(event)
        return model

    def segments(self) -> dict[str, "Recording"]:
        """label -> the recording of the operations after mark(label), up to the next mark. Each segment starts
        from the tree its predecessor left, taken as durable (the previous command's writes reached the disk)."""
        out, model, label, start, initial = {}, Model(self.root, self.initial, self.cwd), None, 0, self.initial
        marks = [i for i, e in enumerate(self.events) if e.name == "mark"] + [len(self.events)]
        for i, event in enumerate(self.events):
            if event.name == "mark":
                label, start, initial = event.args[0], i + 1, model.volatile_tree()
                end = next(m for m in marks if m > i)
                out[label] = Recording(self.root, initial, {}, self.events[start:end], self.cwd)
                continue
            model.apply(event)
            if label is not None:
                out[label].final = model.volatile_tree()
        return out

    def self_test(self) -> None:
        """The replayed tree equals the root on disk after the run: no byte escaped the recorder."""
        replayed = self.replay().volatile_tree()
        if replayed != self.final:
            missing = sorted(set(self.final) ^ set(replayed))
            differ = sorted(p for p in set(self.final) & set(replayed) if self.final[p] != replayed[p])
            raise RecorderError(f"replayed tree differs from disk: only on one side {missing[:5]}, "
                                f"different bytes {differ[:5]}")


def record(code: str, root: str, *, cwd: str, python: str, env: dict | None = None,
           timeout: float = 600) -> Recording:
    """Run `python -c code` under strace; return its operations under `root` (an existing folder)."""
    root = os.path.abspath(root)
    initial = tree(root)
    with tempfile.TemporaryDirectory(prefix="crash-trace-") as work:
        trace = os.path.join(work, "trace.txt")
        syscalls = ",".join("?" + name for name in SYSCALLS.split(","))  # ?: absent on this architecture is fine
        cmd = ["strace", "-f", "-qq", "-xx", "-y", "-s", str(STRING_LIMIT), "-e", f"trace={syscalls}",
               "-o", trace, python, "-c", code]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RecorderError(f"the recorded process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(trace, "r", encoding="ascii", errors="replace") as f:
            events = parse(f, root, cwd=cwd)
    return Recording(root=root, initial=initial, final=tree(root), events=events, cwd=os.path.abspath(cwd),
                     stdout=proc.stdout)


# ----------------------------------------------------------------------------------------------- parsing

@dataclass
class Event:
    """One completed system call: name, parsed arguments, return value (int, or (int, path) for a new fd)."""

    seq: int
    pid: int
    name: str
    args: list
    ret: object
    text: str = field(repr=False, default="")

    def describe(self, root: str) -> str:
        parts = []
        for a in self.args:
            if isinstance(a, Fd):
                parts.append(f"{a.number}<{_rel(a.path, root)}>")
            elif isinstance(a, bytes):
                parts.append(repr(_rel(a.decode("utf-8", "replace"), root)) if len(a) < 200 else f"<{len(a)} bytes>")
            elif isinstance(a, list):
                parts.append(f"<{sum(len(x) for x in a)} bytes>")
            else:
                parts.append(str(a))
        return f"#{self.seq} {self.name}({', '.join(parts)})"


@dataclass(frozen=True)
class Fd:
    number: object  # int, or "AT_FDCWD"
    path: str
    deleted: bool = False  # the file was unlinked: `path` names whatever is there now, not it


_LINE = re.compile(r"^(\d+)\s+(.*)$")
_HEX = re.compile(r"\\x([0-9a-f]{2})")


def _unhex(text: str) -> bytes:
    return bytes.fromhex("".join(_HEX.findall(text)))


def _split_args(text: str) -> tuple[list[str], str]:
    """'a, "b", [c, d]) = 3<..>' -> (['a', '"b"', '[c, d]'], '3<..>')."""
    args, depth, start, i, quote = [], 0, 0, 0, False
    while i < len(text):
        c = text[i]
        if quote:
            if c == '"':
                quote = False
        elif c == '"':
            quote = True
        elif c in "([{<":
            depth += 1
        elif c in "}]>":
            depth -= 1
        elif c == ")":
            if depth == 0:
                args.append(text[start:i].strip())
                rest = text[i + 1:].strip()
                return [a for a in args if a], rest[1:].strip() if rest.startswith("=") else rest
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    raise RecorderError(f"unterminated system call line: {text[:200]}")


def _arg(text: str):
    """A parsed argument: bytes (a string), Fd, list of bytes (an iovec array), or the raw text."""
    if text.startswith('"'):
        if text.endswith("..."):
            raise RecorderError("strace cut a buffer (raise STRING_LIMIT)")
        return _unhex(text[1:-1])
    m = re.match(r"^(AT_FDCWD|-?\d+)<(.*)>(\(deleted\))?$", text, re.S)
    if m:
        number = m.group(1)
        return Fd(number if number == "AT_FDCWD" else int(number), _unhex(m.group(2)).decode("utf-8", "replace"),
                  deleted=m.group(3) is not None)
    if text.startswith("[{iov_base="):
        if re.search(r'"\.\.\.', text):
            raise RecorderError("strace cut an iovec buffer (raise STRING_LIMIT)")
        return [_unhex(s) for s in re.findall(r'iov_base="((?:\\x[0-9a-f]{2})*)"', text)]
    return text


def _ret(text: str):
    m = re.match(r"^(-?\d+)(?:<(.*)>)?", text, re.S)
    if not m:
        return None  # '?' (the process exited) and the like
    value = int(m.group(1))
    if value < 0:
        return None  # failed: no effect
    return (value, _unhex(m.group(2)).decode("utf-8", "replace")) if m.group(2) is not None else value


def parse(lines, root: str, *, cwd: str) -> list[Event]:
    """Events of a `strace -f -xx -y` trace that succeeded and touch `root` (or sync everything)."""
    marker = "".join(f"\\x{b:02x}" for b in os.path.abspath(root).encode())
    mark = "".join(f"\\x{b:02x}" for b in MARK.encode())
    pending: dict[int, str] = {}
    events = []
    for raw in lines:
        m = _LINE.match(raw.rstrip("\n"))
        if not m:
            continue
        pid, body = int(m.group(1)), m.group(2)
        if body.endswith("<unfinished ...>"):
            pending[pid] = body[: -len("<unfinished ...>")].rstrip()
            continue
        if body.startswith("<... "):
            head = pending.pop(pid, None)
            if head is None:
                continue
            body = head + body.split("resumed>", 1)[1]
        if body.startswith(("---", "+++")):
            continue
        name, _, rest = body.partition("(")
        if not name.isidentifier():
            continue
        if marker not in body and mark not in body and name not in ("sync",):
            continue
        args, ret_text = _split_args(rest)
        if mark in body:  # a failed open of MARK/<label>: the recorded process says where a segment starts
            path = next(a for a in (_arg(x) for x in args) if isinstance(a, bytes)).decode()
            events.append(Event(seq=len(events), pid=pid, name="mark", args=[path[len(MARK):]], ret=0, text=body))
            continue
        ret = _ret(ret_text)
        if ret is None and name != "sync":
            continue
        events.append(Event(seq=len(events), pid=pid, name=name, args=[_arg(a) for a in args], ret=ret, text=body))
    return events


# ----------------------------------------------------------------------------------------------- the model

@dataclass
class Inode:
    ino: int
    is_dir: bool
    durable: bytes = b""  # file: bytes that survive a power loss
    volatile: bytes = b""  # file: bytes a reader sees now
    entries: dict = field(default_factory=dict)  # folder: name -> ino, now
    durable_entries: dict = field(default_factory=dict)  # folder: name -> ino, after a power loss


@dataclass
class NsOp:
    """A pending namespace operation: slot changes (folder ino, name, new ino or None), applied together."""

    seq: int
    label: str
    changes: list
    empties: tuple = ()  # folder inos this operation needs empty (rmdir, rename over a folder)

    def folders(self) -> set:
        return {d for d, _, _ in self.changes}


@dataclass
class OpenFile:
    ino: int
    offset: int = 0
    append: bool = False


class Model:
    """The output root as an in-memory file system with durable and volatile state (see the module docstring)."""

    def __init__(self, root: str, initial: dict, cwd: str = "/"):
        self.root = os.path.abspath(root)
        self.cwd = Fd("AT_FDCWD", cwd)  # the recorded process's working folder (for open, mkdir, rename, ...)
        self.inodes: dict[int, Inode] = {}
        self.pending: list[NsOp] = []
        self.fds: dict[int, OpenFile] = {}
        self.syncs: list[tuple[int, str]] = []  # (event seq, role) of every fsync-like call applied
        self.root_ino = self._new(True)
        for rel in sorted(initial, key=lambda p: p.count("/")):
            parent = self._lookup(os.path.join(self.root, os.path.dirname(rel)))
            ino = self._new(initial[rel] is DIR, initial[rel] or b"")
            self.inodes[parent].entries[os.path.basename(rel)] = ino
            self.inodes[parent].durable_entries[os.path.basename(rel)] = ino
            self.inodes[ino].durable = self.inodes[ino].volatile

    # -- lookups
    def _new(self, is_dir: bool, data: bytes = b"") -> int:
        ino = len(self.inodes) + 1
        self.inodes[ino] = Inode(ino, is_dir, volatile=data)
        return ino

    def _under(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + "/")

    def _lookup(self, path: str) -> int | None:
        """The ino at `path` now (volatile namespace), None when absent or outside the root."""
        path = os.path.normpath(path)
        if not self._under(path):
            return None
        ino = self.root_ino
        for name in [p for p in path[len(self.root):].split("/") if p]:
            node = self.inodes[ino]
            if not node.is_dir or name not in node.entries:
                return None
            ino = node.entries[name]
        return ino

    def _slot(self, path: str) -> tuple[int, str] | None:
        """(parent folder ino, name) of `path`, None outside the root or without a parent."""
        path = os.path.normpath(path)
        if path == self.root or not self._under(path):
            return None
        parent = self._lookup(os.path.dirname(path))
        return None if parent is None else (parent, os.path.basename(path))

    def rel(self, path: str) -> str:
        return _rel(path, self.root)

    # -- namespace operations
    def _ns(self, seq: int, label: str, changes: list, empties: tuple = ()) -> None:
        for folder, name, new in changes:
            entries = self.inodes[folder].entries
            if new is None:
                entries.pop(name, None)
            else:
                entries[name] = new
        self.pending.append(NsOp(seq, label, changes, empties))

    def _sync_folder(self, folder: int) -> list:
        """fsync of a folder: every pending operation that changed its entries becomes durable, except a rename
        out of it into another folder (durable only with its destination's fsync). Returns those made durable."""
        ops = [op for op in self.pending if op.changes[-1][0] == folder or
               (folder in op.folders() and not op.label.startswith("rename "))]
        return self._make_durable(ops)

    def _make_durable(self, ops: list) -> list:
        chosen = closure(self.pending, {op.seq for op in ops})
        made = [op for op in self.pending if op.seq in chosen]
        for op in self.pending:
            if op.seq in chosen:
                for folder, name, new in op.changes:
                    entries = self.inodes[folder].durable_entries
                    if new is None:
                        entries.pop(name, None)
                    else:
                        entries[name] = new
        self.pending = [op for op in self.pending if op.seq not in chosen]
        return made

    # -- file contents
    def _file(self, fd: Fd) -> OpenFile | None:
        """The open file of a descriptor, checked against the path strace printed for it."""
        handle = self.fds.get(fd.number)
        if fd.deleted:
            return handle
        ino = self._lookup(fd.path)
        if handle is None:
            if ino is None:
                return None
            handle = self.fds[fd.number] = OpenFile(ino)
        elif ino is not None and ino != handle.ino:
            raise RecorderError(f"descriptor {fd.number} points at {fd.path}, not the file it was opened on "
                                "(a forked process sharing descriptor numbers?)")
        return handle

    def _write(self, handle: OpenFile, data: bytes, offset: int | None) -> None:
        node = self.inodes[handle.ino]
        at = len(node.volatile) if handle.append and offset is None else (handle.offset if offset is None else offset)
        node.volatile = node.volatile[:at].ljust(at, b"\0") + data + node.volatile[at + len(data):]
        if offset is None:
            handle.offset = at + len(data)

    def _path(self, dirfd, name: bytes) -> str:
        name = name.decode("utf-8", "replace")
        if name.startswith("/"):
            return os.path.normpath(name)
        if isinstance(dirfd, Fd):
            return os.path.normpath(os.path.join(dirfd.path, name))
        raise RecorderError(f"relative path {name!r} without a folder descriptor")

    # -- the system calls
    def apply(self, e: Event) -> None:
        a, n = e.args, e.name
        if n in ("open", "creat"):
            a = [self.cwd] + a
            if n == "creat":
                a = a[:2] + ["O_CREAT|O_WRONLY|O_TRUNC"] + a[2:]
            n = "openat"
        if n == "openat":
            path, flags = self._path(a[0], a[1]), a[2]
            number = e.ret[0] if isinstance(e.ret, tuple) else e.ret
            ino = self._lookup(path)
            if ino is None:
                slot = self._slot(path)
                if slot is None:
                    return
                if "O_CREAT" not in flags:
                    raise RecorderError(f"{e.describe(self.root)}: opened a file the model does not hold")
                ino = self._new(False)
                self._ns(e.seq, f"create {self.rel(path)}", [(slot[0], slot[1], ino)])
            if "O_TRUNC" in flags and not self.inodes[ino].is_dir:
                self.inodes[ino].volatile = b""
            self.fds[number] = OpenFile(ino, append="O_APPEND" in flags)
        elif n in ("write", "pwrite64", "writev", "pwritev", "pwritev2"):
            handle = self._file(a[0])
            if handle is None:
                return
            data = b"".join(a[1]) if isinstance(a[1], list) else a[1]
            data = data[:e.ret]
            offset = int(a[3]) if n in ("pwrite64", "pwritev", "pwritev2") else None
            self._write(handle, data, offset)
        elif n == "lseek":
            handle = self._file(a[0])
            if handle is not None:
                handle.offset = e.ret
        elif n in ("ftruncate", "truncate"):
            if n == "ftruncate":
                handle = self._file(a[0])
                ino = handle.ino if handle else None
            else:
                ino = self._lookup(self._path(self.cwd, a[0]))
            if ino is not None:
                node, size = self.inodes[ino], int(a[1])
                node.volatile = node.volatile[:size].ljust(size, b"\0")
        elif n == "fallocate":
            handle = self._file(a[0])
            if handle is not None and a[1] == "0":
                node, end = self.inodes[handle.ino], int(a[2]) + int(a[3])
                node.volatile = node.volatile.ljust(end, b"\0")
        elif n in ("mkdir", "mkdirat"):
            path = self._path(a[0], a[1]) if n == "mkdirat" else self._path(self.cwd, a[0])
            slot = self._slot(path)
            if slot is not None:
                self._ns(e.seq, f"mkdir {self.rel(path)}", [(slot[0], slot[1], self._new(True))])
        elif n in ("unlink", "unlinkat", "rmdir"):
            if n == "unlinkat":
                path, is_dir = self._path(a[0], a[1]), "AT_REMOVEDIR" in a[2]
            else:
                path, is_dir = self._path(self.cwd, a[0]), n == "rmdir"
            slot, ino = self._slot(path), self._lookup(path)
            if slot is not None and ino is not None:
                verb = "rmdir" if is_dir else "unlink"
                self._ns(e.seq, f"{verb} {self.rel(path)}", [(slot[0], slot[1], None)], (ino,) if is_dir else ())
        elif n in ("rename", "renameat", "renameat2"):
            if n == "rename":
                cwd = self.cwd
                old, new = self._path(cwd, a[0]), self._path(cwd, a[1])
            else:
                old, new = self._path(a[0], a[1]), self._path(a[2], a[3])
                if n == "renameat2" and "RENAME_EXCHANGE" in a[4]:
                    raise RecorderError(f"{e.describe(self.root)}: RENAME_EXCHANGE is not modelled")
            src, dst, ino = self._slot(old), self._slot(new), self._lookup(old)
            if src is None and dst is None:
                return
            if ino is None:
                raise RecorderError(f"{e.describe(self.root)}: a file the recorder never saw written was "
                                    "renamed into the output root")
            replaced = self._lookup(new)
            empties = (replaced,) if replaced is not None and self.inodes[replaced].is_dir else ()
            changes = ([(src[0], src[1], None)] if src else []) + ([(dst[0], dst[1], ino)] if dst else [])
            self._ns(e.seq, f"rename {self.rel(old)} -> {self.rel(new)}", changes, empties)
        elif n in ("link", "linkat"):
            old, new = (self._path(a[0], a[1]), self._path(a[2], a[3])) if n == "linkat" else \
                (self._path(self.cwd, a[0]), self._path(self.cwd, a[1]))
            slot, ino = self._slot(new), self._lookup(old)
            if slot is not None:
                if ino is None:
                    raise RecorderError(f"{e.describe(self.root)}: hard link of an unseen file")
                self._ns(e.seq, f"link {self.rel(old)} -> {self.rel(new)}", [(slot[0], slot[1], ino)])
        elif n in ("symlink", "symlinkat"):
            raise RecorderError(f"{e.describe(self.root)}: symbolic links are not modelled")
        elif n in ("fsync", "fdatasync"):
            handle = self._file(a[0])
            if handle is None:
                return
            node = self.inodes[handle.ino]
            if node.is_dir:
                made = self._sync_folder(handle.ino)
                what = ", ".join(sorted({_kind(op, handle.ino) for op in made})) or "nothing pending"
            else:
                what = "its bytes" if node.durable != node.volatile else "nothing new"
                node.durable = node.volatile
            self.syncs.append((e.seq, f"{role(e, self.root)}{'/' if node.is_dir else ''} [{what}]"))
        elif n in ("sync", "syncfs"):
            self._make_durable(list(self.pending))
            for node in self.inodes.values():
                node.durable = node.volatile
            self.syncs.append((e.seq, n))
        elif n == "close":
            if isinstance(a[0], Fd):
                self.fds.pop(a[0].number, None)
        elif n in ("dup", "dup2", "dup3") or (n == "fcntl" and "F_DUPFD" in a[1]):
            handle = self._file(a[0])
            if handle is not None:
                self.fds[e.ret[0] if isinstance(e.ret, tuple) else e.ret] = handle
        elif n in ("copy_file_range", "sendfile"):
            raise RecorderError(f"{e.describe(self.root)}: in-kernel copies are not modelled")
        elif n == "mark":
            pass
        elif n == "mmap":
            if "MAP_SHARED" in e.text and "PROT_WRITE" in e.text:
                raise RecorderError(f"{e.describe(self.root)}: writes through a shared mmap are invisible")
        # sync_file_range: writes data back without metadata; it makes nothing durable.

    # -- states
    def volatile_tree(self) -> dict:
        return self._tree(lambda node: node.entries, lambda node: node.volatile)

    def _tree(self, entries: Callable, content: Callable) -> dict:
        out = {}

        def walk(ino: int, prefix: str) -> None:
            for name, child in sorted(entries(self.inodes[ino]).items()):
                rel = f"{prefix}{name}"
                node = self.inodes[child]
                if node.is_dir:
                    out[rel] = DIR
                    walk(child, rel + "/")
                else:
                    out[rel] = content(node)
        walk(self.root_ino, "")
        return out

    def crash_tree(self, chosen: set, content: Callable) -> dict:
        """The tree after a power loss that kept the pending operations `chosen` (closed under dependencies)
        and left each file with `content(node)` bytes."""
        maps = {ino: dict(node.durable_entries) for ino, node in self.inodes.items() if node.is_dir}
        for op in self.pending:
            if op.seq in chosen:
                for folder, name, new in op.changes:
                    if new is None:
                        maps[folder].pop(name, None)
                    else:
                        maps[folder][name] = new
        return self._tree(lambda node: maps[node.ino], content)

    def unsynced_files(self) -> list[Inode]:
        return [n for n in self.inodes.values() if not n.is_dir and n.durable != n.volatile]

    def states(self, *, full: bool = True) -> Iterator[tuple[str, dict]]:
        """(description, tree) of the distinct states a power loss may leave now (see the module docstring).
        full=False (CI) leaves out, per pending operation, 'alone persisted without unsynced bytes' and, per
        unsynced file, every variant but its durable bytes (the all-files-torn states stay)."""
        seen = set()
        every = {op.seq for op in self.pending}
        files = self.unsynced_files()

        def whole(node):
            return node.volatile

        def emit(label, chosen, content=whole):
            state = self.crash_tree(chosen, content)
            key = hash(tuple(sorted(state.items())))
            if key not in seen:
                seen.add(key)
                return [(label, state)]
            return []

        yield from emit("everything persisted", every)
        yield from emit("only durable state", set(), lambda node: node.durable)
        for kind in TORN:
            yield from emit(f"every unsynced file {kind}, every folder change persisted", every,
                            lambda node, k=kind: torn(node, k))
        for op in self.pending:
            yield from emit(f"only [{op.label}] lost", every - dependents(self.pending, op.seq))
            yield from emit(f"only [{op.label}] persisted", closure(self.pending, {op.seq}))
            if full:
                yield from emit(f"only [{op.label}] persisted, no unsynced bytes", closure(self.pending, {op.seq}),
                                lambda node: node.durable)
        for node in files:
            kinds = TORN if full else ("old",)
            for kind in kinds:
                yield from emit(f"{self._name(node)} {kind}, everything else persisted", every,
                                lambda other, k=kind, target=node.ino: torn(other, k) if other.ino == target
                                else other.volatile)

    def _name(self, node: Inode) -> str:
        for rel, ino in self._paths().items():
            if ino == node.ino:
                return rel
        return f"inode {node.ino}"

    def _paths(self) -> dict:
        out = {}

        def walk(ino, prefix):
            for name, child in self.inodes[ino].entries.items():
                out[prefix + name] = child
                if self.inodes[child].is_dir:
                    walk(child, prefix + name + "/")
        walk(self.root_ino, "")
        return out


TORN = ("old", "empty", "half", "zeroed tail")


def torn(node: Inode, kind: str) -> bytes:
    """A file's bytes after a power loss: its durable bytes, empty, the first half of its new bytes, its new
    length with the second half zeros, or (any other kind) whole."""
    new = node.volatile
    if node.durable == new:
        return new  # synced: a power loss keeps it
    if kind == "old":
        return node.durable
    if kind == "empty":
        return b""
    if kind == "half":
        return new[: len(new) // 2]
    if kind == "zeroed tail":
        return new[: len(new) // 2] + b"\0" * (len(new) - len(new) // 2)
    return new


def _depends(pending: list) -> dict[int, set]:
    """seq -> seqs of the earlier pending operations it needs (same slot; removals from a folder it empties)."""
    deps, last = {}, {}
    for op in pending:
        need = set()
        for folder, name, _ in op.changes:
            if (folder, name) in last:
                need.add(last[(folder, name)])
        for folder in op.empties:
            need |= {o.seq for o in pending if o.seq < op.seq and folder in o.folders()}
        deps[op.seq] = need
        for folder, name, _ in op.changes:
            last[(folder, name)] = op.seq
    return deps


def closure(pending: list, seqs: set) -> set:
    """`seqs` and every pending operation they need, transitively."""
    deps, out, todo = _depends(pending), set(), list(seqs)
    while todo:
        s = todo.pop()
        if s not in out:
            out.add(s)
            todo += deps.get(s, ())
    return out


def dependents(pending: list, seq: int) -> set:
    """`seq` and every pending operation that needs it, transitively (what cannot persist without it)."""
    deps = _depends(pending)
    out = {seq}
    for op in pending:
        if deps[op.seq] & out:
            out.add(op.seq)
    return out


# ----------------------------------------------------------------------------------------------- crash points

@dataclass
class Point:
    index: int  # position in the event list
    event: Event
    model: Model = field(repr=False)


def crash_points(events: list, rec: Recording, *, every_write: bool = False) -> Iterator[Point]:
    """Replay `events` and stop after each (the model is live: use it before advancing). A run of writes to
    one file gives one point, after its last write (the torn variants cover the writes in between), unless
    every_write."""
    model = Model(rec.root, rec.initial, rec.cwd)
    for i, event in enumerate(events):
        model.apply(event)
        if not every_write and _is_write(event) and i + 1 < len(events) and _is_write(events[i + 1]) \
                and events[i + 1].args[0].path == event.args[0].path:
            continue
        yield Point(i, event, model)


def _is_write(event: Event) -> bool:
    return event.name in ("write", "pwrite64", "writev", "pwritev", "pwritev2")


# ----------------------------------------------------------------------------------------------- fsync roles

_AREA = re.compile(r"^_staging/[^/]+")
_PARTITION = re.compile(r"(?<=/)(run_id|score_run_id)=[^/]+|^(run_id|score_run_id)=[^/]+")


def role(event: Event, root: str) -> str:
    """What an fsync made durable, named by the synced path with run ids and tokens abstracted:
    e.g. 'fsync _staging/<area>/_COMMIT', 'fsync weights/ (folder)'."""
    fd = event.args[0]
    rel = _rel(fd.path, root)
    rel = _AREA.sub("_staging/<area>", rel)
    rel = re.sub(r"(run_id|score_run_id)=[^/]+", r"\1=<id>", rel)
    rel = re.sub(r"/\.([^/]*)\.[0-9a-f]{8}(\.tmp)?$", r"/.\1.<token>\2", rel)
    return f"{event.name} {rel}"


def sync_roles(rec: Recording) -> dict[str, list[int]]:
    """role -> seqs of the fsync-like calls of that role: the synced path with ids abstracted, and what the
    call made durable (e.g. 'fsync weights/ [rename in]', 'fsync _staging/<area>/_COMMIT [its bytes]')."""
    out: dict[str, list[int]] = {}
    for seq, name in rec.replay().syncs:
        out.setdefault(name, []).append(seq)
    return out


def _kind(op: NsOp, folder: int) -> str:
    """What a namespace operation did to `folder`: create, mkdir, unlink, rmdir, link, rename in/out/within."""
    verb = op.label.split(" ", 1)[0]
    if verb != "rename":
        return verb
    dst = op.changes[-1][0]
    if len(op.changes) == 2 and op.changes[0][0] == dst:
        return "rename within"
    return "rename in" if dst == folder and op.changes[-1][2] is not None else "rename out"


def without(events: list, seqs) -> list:
    """The events minus those with the given seqs (e.g. one role's fsyncs)."""
    drop = set(seqs)
    return [e for e in events if e.seq not in drop]


def without_syncs(events: list) -> list:
    return [e for e in events if e.name not in ("fsync", "fdatasync", "syncfs", "sync")]


def _rel(path: str, root: str) -> str:
    root = os.path.abspath(root)
    if path == root:
        return "."
    return path[len(root) + 1:] if path.startswith(root + "/") else path


__all__ = ["record", "Recording", "Model", "Event", "Fd", "RecorderError", "crash_points", "tree", "write_tree",
           "sync_roles", "without", "without_syncs", "role", "DIR", "TORN"]
