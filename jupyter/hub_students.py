"""Create (or remove) the class's system accounts from a class list (run as root).

    hub_students.py add CLASS_LIST [--group mgpu-students] [--passwords FILE]
    hub_students.py remove CLASS_LIST [--group mgpu-students]

``make students CLASS=class.txt`` runs ``add``. A class list is one user name per line
(blank lines and ``#`` comments are ignored). ``add`` checks the whole list first: a
name that is not a valid user name, a name listed twice, or a name already taken by an
account outside the class stops it with one line per problem and nothing created. Then
each new student gets an account in the class group, a home only they can read, a random
password (written, with the others, to FILE, default CLASS_LIST.passwords, readable by
root only) and a copy of the student edition's notebooks in ``~/mgpu_lab``. A student
already in the class is left as they are, so ``add`` can be run again after the list
grows. If creating an account fails half way, the accounts this run created are removed.
"""
import argparse
import grp
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOTEBOOKS = os.path.join(ROOT, "_build", "student", "notebooks")
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # portable: Debian's adduser and useradd agree

__all__ = ["read_class_list", "plan", "add", "remove", "student_notebooks", "main"]


def read_class_list(path):
    """The user names of a class list, in order; ValueError naming every bad line."""
    if not os.path.isfile(path):
        raise ValueError(f"no class list at {path!r}: one user name per line")
    names, seen, problems = [], {}, []
    for no, line in enumerate(open(path, encoding="utf-8"), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not NAME.match(name):
            problems.append(f"{path} line {no}: {name!r} is not a valid user name (a lower-case "
                            f"letter, then up to 31 lower-case letters, digits, - or _)")
        elif name in seen:
            problems.append(f"{path} line {no}: {name!r} is listed twice (first on line "
                            f"{seen[name]})")
        else:
            seen[name] = no
            names.append(name)
    if problems:
        raise ValueError("\n".join(problems))
    if not names:
        raise ValueError(f"{path} lists no students: one user name per line")
    return names


def _exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _members(group):
    try:
        return set(grp.getgrnam(group).gr_mem)
    except KeyError:
        return set()


def plan(names, group):
    """The names to create; ValueError if any is an account outside the class."""
    members = _members(group)
    if group in names:
        raise ValueError(f"{group!r} is the class group's name and cannot be a student's "
                         f"(each account gets a group of its own name): rename one")
    taken = [n for n in names if _exists(n) and n not in members]
    if taken:
        raise ValueError(f"already accounts on this machine, not in the class group "
                         f"{group!r}: {', '.join(taken)}: rename them in the class list")
    return [n for n in names if not _exists(n)]


def student_notebooks():
    """The student edition's notebooks, written from the sources if not built yet (no
    book build needed: the notebooks are unexecuted)."""
    if not os.path.isdir(NOTEBOOKS) or not os.listdir(NOTEBOOKS):
        sys.path.insert(0, os.path.join(ROOT, "book", "_ext"))
        import student_edition
        out = os.path.dirname(NOTEBOOKS)
        student_edition.write_notebooks(student_edition.chapter_texts(), out)
    return NOTEBOOKS


def _run(*cmd, stdin=None):
    r = subprocess.run(cmd, input=stdin, text=True, capture_output=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")


def _create(name, group, password, notebooks):
    _run("useradd", "--create-home", "--shell", "/bin/bash", "--groups", group,
         "--comment", "mgpu_lab student", name)
    home = pwd.getpwnam(name).pw_dir
    os.chmod(home, 0o700)  # no other student (nor any other user) reads it
    _run("chpasswd", stdin=f"{name}:{password}\n")
    target = os.path.join(home, "mgpu_lab")
    shutil.copytree(notebooks, target)
    _run("chown", "-R", f"{name}:{name}", target)


def add(class_list, group="mgpu-students", passwords=None):
    """Create the class list's new students; returns {name: password} of those created."""
    names = plan(read_class_list(class_list), group)
    if os.geteuid() != 0:
        raise PermissionError("creating accounts needs root: sudo make students CLASS=...")
    notebooks = student_notebooks()
    made_group = not _group_exists(group)
    if made_group:
        _run("groupadd", group)
    created = {}
    try:
        for name in names:
            created[name] = secrets.token_urlsafe(9)
            _create(name, group, created[name], notebooks)
    except BaseException:
        for name in created:
            subprocess.run(["userdel", "--remove", name], capture_output=True)
        if made_group:
            subprocess.run(["groupdel", group], capture_output=True)
        raise
    if created:
        path = passwords or f"{class_list}.passwords"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.writelines(f"{n} {p}\n" for n, p in created.items())
    return created


def _group_exists(group):
    try:
        grp.getgrnam(group)
        return True
    except KeyError:
        return False


def remove(class_list, group="mgpu-students"):
    """Remove the listed students (accounts, homes); refuses accounts outside the class."""
    names = [n for n in read_class_list(class_list) if _exists(n)]
    outside = [n for n in names if n not in _members(group)]
    if outside:
        raise ValueError(f"not in the class group {group!r}, left alone: {', '.join(outside)}")
    for name in names:
        _run("userdel", "--remove", name)
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["add", "remove"])
    p.add_argument("class_list")
    p.add_argument("--group", default="mgpu-students")
    p.add_argument("--passwords", help="where add writes the passwords (CLASS_LIST.passwords)")
    args = p.parse_args(argv)
    try:
        if args.action == "add":
            made = add(args.class_list, args.group, args.passwords)
            where = args.passwords or f"{args.class_list}.passwords"
            print(f"{len(made)} new students" + (f"; their passwords are in {where} (root "
                                                 f"only): hand each student theirs" if made else ""))
        else:
            print(f"removed {len(remove(args.class_list, args.group))} students")
    except (ValueError, PermissionError, RuntimeError) as e:
        sys.exit(f"students: {e}")


if __name__ == "__main__":
    main()
