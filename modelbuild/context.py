"""The build context: a local directory, and the patterns that select files from it.

Pattern rules (documented in docs/modelfile.md):

* ``*``, ``?`` and ``[…]`` match within one path segment (``[!…]`` and Go's ``[^…]`` negate);
  as in a shell, a wildcard does not match a leading ``.``: ``*`` never picks up ``.git``,
  ``.cache`` or ``.gitattributes`` (write ``.*`` or the name to select them);
* ``**`` as a whole segment matches zero or more directories; a pattern with ``**`` selects
  files only, since a directory it crossed is already covered by its files; a trailing
  ``**`` selects every file below;
* a pattern without magic characters is a literal path and must exist;
* a matched directory is packaged whole, as one tar layer;
* no pattern may leave the context: absolute paths and ``..`` are refused;
* what ``.modelbuildignore`` and ``build --exclude`` exclude (:mod:`modelbuild.ignore`) is not
  in the context: a pattern never selects it, a packaged directory leaves it out, and naming
  it literally is an error that says which rule excludes it.

Symlinks are followed for content (a Hugging Face cache snapshot is a tree of symlinks into
``blobs/``); the path recorded in the artifact is the link's path inside the context.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from modelbuild.artifact_paths import link_problem, path_problem
from modelbuild.errors import ModelfileError
from modelbuild.ignore import IgnoreRules, Rule, context_rules
from modelbuild.oci.verify import shown

_MAGIC = set("*?[")


@dataclass(frozen=True, slots=True)
class Match:
    """A path selected by a pattern."""

    path: str  # POSIX, relative to the context root
    is_dir: bool


def has_magic(pattern: str) -> bool:
    return any(c in _MAGIC for c in pattern)


class BuildContext:
    """A directory that Modelfile paths are relative to, less what its ignore rules exclude."""

    def __init__(self, root: Path, ignore: IgnoreRules | None = None) -> None:
        self.root = root
        # the rules of the context's .modelbuildignore and --exclude unless the caller chose
        self.ignore = context_rules(root) if ignore is None else ignore

    def __repr__(self) -> str:
        return f"BuildContext({str(self.root)!r})"

    def match(self, pattern: str) -> list[Match]:
        """Every path *pattern* selects, sorted; raises ModelfileError if none or if it escapes."""
        segments = _normalise(pattern)
        if not any(has_magic(s) for s in segments):
            rel = "/".join(segments)
            if self.ignore and os.path.lexists(self.root / rel) and (
                    why := self.ignore.exclusion(rel, _is_dir(self.root / rel))):
                raise ModelfileError(why.message(rel), hint=why.hint(rel))
            return [Match(rel, self._check(rel, literal=True))]
        recursive = "**" in segments
        found: list[str] = []
        skipped: list[tuple[Rule, bool]] = []  # (rule, is_dir) for each match an ignore rule excluded
        self._walk(Path(self.root), segments, [], found, skipped)
        matches = []
        for rel in sorted(set(found)):
            is_dir = self._check(rel, literal=False)
            if recursive and is_dir:
                continue
            matches.append(Match(rel, is_dir))
        if not matches:
            rules = [rule for rule, is_dir in skipped if not (recursive and is_dir)]  # ** selects files only
            hint = f"what it matches is excluded by {rules[0].origin}, {rules[0].text!r}" if rules else None
            raise ModelfileError(f"pattern {pattern!r} matches nothing in {self.root}", hint=hint)
        return matches

    def _walk(self, base: Path, segments: list[str], prefix: list[str], found: list[str],
              skipped: list[tuple[Rule, bool]]) -> None:
        if not segments:
            if prefix:
                found.append("/".join(prefix))
            return
        head, rest = segments[0], segments[1:]
        if head == "**":
            self._walk(base, rest, prefix, found, skipped)  # zero directories
            for name, is_dir in _listdir(base):
                final = not (is_dir or rest)  # a file a trailing ** takes
                if name.startswith(".") or self._excluded(prefix + [name], is_dir, skipped if final else None):
                    continue
                if is_dir:
                    self._walk(base / name, segments, prefix + [name], found, skipped)
                elif not rest:
                    found.append("/".join(prefix + [name]))  # a trailing ** takes every file
            return
        if not has_magic(head):
            if os.path.lexists(base / head) and not self._excluded(prefix + [head], bool(rest) or _is_dir(base / head),
                                                                  None if rest else skipped):
                self._walk(base / head, rest, prefix + [head], found, skipped)
            return
        wanted = head.replace("[^", "[!")  # Go's negation spelling, as modctl users write it
        for name, is_dir in _listdir(base):
            if name.startswith(".") and not head.startswith("."):
                continue
            if fnmatchcase(name, wanted) and (is_dir or not rest) and not self._excluded(prefix + [name], is_dir,
                                                                                        None if rest else skipped):
                self._walk(base / name, rest, prefix + [name], found, skipped)

    def _excluded(self, names: list[str], is_dir: bool, skipped: list[tuple[Rule, bool]] | None) -> bool:
        """Whether the walk must leave this path out (its parents passed this check already);
        *skipped*, when the path would be a match, records the rule that excluded it."""
        rule = self.ignore.rule_for("/".join(names), is_dir)
        if rule is None or rule.negate:
            return False
        if skipped is not None:
            skipped.append((rule, is_dir))
        return True

    def _check(self, rel: str, *, literal: bool) -> bool:
        """Check that *rel* is something we can package; return whether it is a directory."""
        _check_name(rel)
        path = self.root / rel
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if os.path.islink(path):
                raise ModelfileError(f"{rel}: broken symlink (points to {os.readlink(path)!r})") from None
            raise ModelfileError(f"{rel}: no such file or directory in {self.root}") from None
        except OSError as exc:
            raise ModelfileError(f"{rel}: cannot access ({exc.strerror})") from None
        if stat.S_ISDIR(st.st_mode):
            if not os.access(path, os.R_OK | os.X_OK):
                raise ModelfileError(f"{rel}: directory is not readable")
            walk_tree(self.root, rel, self.ignore)  # a bad member is an error now, at the line, not mid-build
            return True
        if not stat.S_ISREG(st.st_mode):
            raise ModelfileError(f"{rel}: {special_file_kind(st.st_mode)}, not a regular file or directory")
        if not os.access(path, os.R_OK):
            raise ModelfileError(f"{rel}: file is not readable (permission denied)")
        return False


def _check_name(rel: str) -> None:
    """Refuse, at the Modelfile's line, a name that ``pull -o`` would refuse to write.

    File names go into JSON and tar headers as UTF-8, and come back out of them on pull:
    :mod:`modelbuild.artifact_paths` is the one rule for both directions.
    """
    problem = path_problem(rel)
    if problem is None:
        return
    if problem == "is not valid UTF-8":
        name = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ModelfileError(f"{name}: file name is not valid UTF-8; rename it")
    raise ModelfileError(f"{shown(rel)}: this file name {problem}; an artifact cannot carry it, rename it")


def special_file_kind(mode: int) -> str:
    """Name a special file the way a user would."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "a special file"


def _is_dir(path: Path) -> bool:
    """Whether *path* is a directory for an ignore rule's trailing ``/``: a symlink is not (git's view)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _listdir(base: Path) -> list[tuple[str, bool]]:
    try:
        with os.scandir(base) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    except (NotADirectoryError, FileNotFoundError, PermissionError):
        return []
    entries.sort()
    return entries


def _normalise(pattern: str) -> list[str]:
    """Split a pattern into segments, refusing anything that leaves the context."""
    if not pattern:
        raise ModelfileError("empty path")
    if pattern.startswith("/") or PurePosixPath(pattern).is_absolute():
        raise ModelfileError(
            f"{pattern!r} is an absolute path; paths are relative to the build context",
            hint="use FROM to choose the context",
        )
    segments = [s for s in pattern.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise ModelfileError(
            f"{pattern!r} escapes the build context",
            hint="'..' is not allowed; use FROM to choose a context that contains the file",
        )
    if not segments:
        raise ModelfileError(f"{pattern!r} names the context itself; name the files in it")
    return segments


@dataclass(frozen=True, slots=True)
class TreeFile:
    """One member of a packaged directory, in archive order."""

    path: str  # relative to the context
    abspath: str
    kind: str  # "file", "dir" or "symlink"
    mode: int
    size: int
    linkname: str = ""


def walk_tree(root: Path, rel: str, ignore: IgnoreRules | None = None) -> list[TreeFile]:
    """The members of directory *rel* in lexicographic order, the directory itself first.

    Symlinks to files are followed (their content is packaged); symlinks to directories are
    kept as links, so a link cycle cannot make the walk endless. What *ignore* excludes is
    left out unseen (its names are not checked, its directories not entered), *rel* itself
    being known not to be excluded.
    """
    out: list[TreeFile] = []
    top = root / rel
    st = os.stat(top)
    out.append(TreeFile(rel, str(top), "dir", st.st_mode, 0))
    stack = [rel]
    while stack:
        current = stack.pop()
        for name, is_dir in _listdir(root / current):
            child_rel = f"{current}/{name}"
            if ignore is not None and ignore.excludes(child_rel, is_dir):
                continue
            _check_name(child_rel)
            abspath = root / child_rel
            lst = os.lstat(abspath)
            if stat.S_ISLNK(lst.st_mode):
                try:
                    st = os.stat(abspath)
                except OSError:
                    raise ModelfileError(
                        f"{child_rel}: broken symlink (points to {os.readlink(abspath)!r})"
                    ) from None
                if stat.S_ISDIR(st.st_mode):
                    target = os.readlink(abspath)
                    if problem := link_problem(child_rel, target):
                        raise ModelfileError(
                            f"{shown(child_rel)}: symbolic link {problem}; a pull could not write it "
                            "(make it relative, inside the directory, or copy what it points to)"
                        )
                    out.append(TreeFile(child_rel, str(abspath), "symlink", 0o777, 0, target))
                    continue
            else:
                st = lst
            if stat.S_ISDIR(st.st_mode):
                out.append(TreeFile(child_rel, str(abspath), "dir", st.st_mode, 0))
                stack.append(child_rel)
            elif stat.S_ISREG(st.st_mode):
                out.append(TreeFile(child_rel, str(abspath), "file", st.st_mode, st.st_size))
            else:
                raise ModelfileError(f"{child_rel}: {special_file_kind(st.st_mode)}, not a regular file, directory or symlink")
    out.sort(key=lambda t: t.path)
    return out
