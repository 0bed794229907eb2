"""What a configuration value may be: pure checks the schema, the CLI and the tests share.

Each `*_problem` function answers None for a value that can be written where it goes (a systemd
unit, a cron line, a data directory on every host), else the reason, for an error message.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata

from orchestrator.ids import shown as _shown

_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


#: characters of a data directory: it goes into the unit (WorkingDirectory=, ReadWritePaths=),
#: where spaces, quotes, `%` and `$` would be read as syntax
_DATA_DIR_RE = re.compile(r"/[A-Za-z0-9._/-]{1,254}")


#: Accounts and groups that exist on a host before the service does: Debian's base system
#: (base-passwd, base-files, systemd), the packages of the host image (sshd, dbus, HAProxy,
#: Prometheus and its exporters) and the usual daemon accounts. The service user is created with
#: `useradd --system` and a group of its name, gets a nologin shell and owns the data directory:
#: giving that to one of these would lock out logins (root), hand the service a privileged group
#: (disk, shadow, sudo, adm, ...) or break the daemon that owns it. One list, used for
#: service.user and for service.name when it doubles as the user.
SYSTEM_ACCOUNTS = frozenset({
    # base-passwd users and groups
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "gnats", "nobody", "nogroup", "adm", "tty", "disk", "kmem",
    "dialout", "fax", "voice", "cdrom", "floppy", "tape", "sudo", "audio", "dip", "operator", "src",
    "shadow", "utmp", "video", "sasl", "plugdev", "staff", "users", "input", "sgx", "kvm", "render",
    "netdev", "crontab", "ssl-cert", "lpadmin",
    # packages of the host image and common daemons
    "_apt", "_ssh", "sshd", "messagebus", "polkitd", "prometheus", "node-exporter", "alertmanager",
    "haproxy", "ntp", "chrony", "_chrony", "postfix", "postdrop", "tcpdump", "uuidd", "avahi",
    "statd", "_rpc", "dnsmasq", "rtkit", "syslog", "docker", "lxd", "ubuntu", "admin", "debian",
})
#: any account starting with these is a system one too (systemd-network, systemd-journal, ...)
SYSTEM_ACCOUNT_PREFIXES = ("systemd-",)


#: where a data directory may live: a directory below one of these, never the root itself
DATA_DIR_ROOTS = ("/var/lib", "/srv", "/opt")
#: directories below /var/lib that the system owns on every host (Debian and the host image): the
#: data directory is chowned to the service user, so it must not be one of these or below them
SYSTEM_DATA_DIRS = frozenset(f"/var/lib/{name}" for name in (
    "apt", "dbus", "dpkg", "haproxy", "misc", "pam", "private", "prometheus", "python", "sudo",
    "systemd", "ucf", "polkit-1", "ssh", "sshd", "dhcp", "logrotate", "shells.state", "os-prober",
))


#: largest EnvironmentFile value, in bytes: one environment string may hold at most 128 KiB
#: (MAX_ARG_STRLEN) or the service's execve fails; this leaves room for many of them
MAX_ENV_VALUE_BYTES = 65536


#: the placeholders of service arguments (roles/rust_service: rust_service_args and hooks)
ARG_PLACEHOLDERS = ("config_dir", "data_dir", "name", "port", "release_dir")

#: the service's command line when the environment file gives none (hello-service's flags)
DEFAULT_ARGS = ("--port", "{port}", "--data-dir", "{data_dir}")


def control_characters(text: str) -> list[str]:
    """The distinct control characters (Unicode Cc: C0, DEL, C1) of `text`, as escapes."""
    return sorted({repr(c)[1:-1] for c in text if unicodedata.category(c) == "Cc"})


def env_value_problem(value: str | int | float | bool) -> str | None:
    """Why `value` cannot be an EnvironmentFile value (None: it reaches the service byte for byte).

    systemd reads one line per variable and C strings: a newline, carriage return or NUL cannot be
    carried; anything else can (the role quotes it).
    """
    if not isinstance(value, str):
        return None
    found = sorted({repr(c)[1:-1] for c in value if c in "\n\r\x00"})
    if found:
        return f"holds {', '.join(found)}, which an EnvironmentFile cannot carry (one line per variable)"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ENV_VALUE_BYTES:
        return f"is {size} bytes long; at most {MAX_ENV_VALUE_BYTES} fit in a process environment"
    return None


def system_account_problem(user: str) -> str | None:
    """Why `user` cannot be the service's user (None: it can)."""
    if not _USER_RE.fullmatch(user):
        return (f"{_shown(user)} is not a system user name: lowercase letters, digits, '_' and '-', "
                "starting with a letter or '_', at most 32")
    if user in SYSTEM_ACCOUNTS or user.startswith(SYSTEM_ACCOUNT_PREFIXES):
        return f"{user!r} is an account or group of the system; give the service a user of its own"
    return None


def data_dir_problem(path: str, service: str) -> str | None:
    """Why `path` cannot be the service's data directory (None: it can)."""
    roots = ", ".join(DATA_DIR_ROOTS)
    if not _DATA_DIR_RE.fullmatch(path):
        return (f"{_shown(path)} is not an absolute path of letters, digits and . _ - / "
                f"below {roots}")
    if posixpath.normpath(path) != path:
        return f"{path!r} is not normalised (write {posixpath.normpath(path)!r}: no '..', '.', '//' or trailing '/')"
    if not any(path.startswith(root + "/") for root in DATA_DIR_ROOTS):
        return f"{path!r} must be a directory below {roots} (it is chowned to the service user)"
    owned = next((d for d in sorted(SYSTEM_DATA_DIRS) if path == d or path.startswith(d + "/")), None)
    if owned is not None:
        return f"{path!r} is {'' if path == owned else 'inside '}{owned}, which the system owns"
    base = f"/opt/{service}"
    if path == base or path.startswith(base + "/"):
        return f"{path!r} is {'' if path == base else 'inside '}{base}, where the releases live"
    return None


#: cron's month and weekday names (crontab(5)): the only letters a field may hold
_CRON_NAMES = frozenset({"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
                         "sun", "mon", "tue", "wed", "thu", "fri", "sat"})
_CRON_SHORTCUTS = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@reboot")
_CRON_NUMERIC_RE = re.compile(r"[0-9*/,-]+")
_CRON_NAMED_RE = re.compile(r"[0-9A-Za-z*/,-]+")


def cron_problem(expression: str) -> str | None:
    """Why cron would not run `expression` as written (None: it would).

    Five fields of numbers, ranges, steps, lists and `*` (names in the month and weekday fields)
    or one of the @ shortcuts; values in range, as croniter parses them. croniter's extensions
    that cron lacks (seconds, L, W, #, ?, H) are refused.
    """
    example = "a cron expression of 5 fields such as '0 3 * * 1-5'"
    if control_characters(expression):
        return f"{_shown(expression)} holds control characters; expected {example}"
    if expression.startswith("@"):
        if expression not in _CRON_SHORTCUTS:
            return f"{expression!r} is not one of {', '.join(_CRON_SHORTCUTS)}"
        return None
    fields = expression.split()
    if len(fields) != 5:
        return f"{_shown(expression)} is not {example}"
    for index, item in enumerate(fields):
        named = index >= 3
        pattern = _CRON_NAMED_RE if named else _CRON_NUMERIC_RE
        words = {w.lower() for w in re.findall(r"[A-Za-z]+", item)}
        if not pattern.fullmatch(item) or not words <= _CRON_NAMES:
            what = "numbers, ranges, steps, lists, * and month or weekday names" if named else \
                "numbers, ranges, steps, lists and *"
            return f"{_shown(expression)}: field {index + 1} ({_shown(item, 20)}) is not made of {what}"
    from croniter import croniter  # here: only an environment with a schedule pays for its import

    try:
        valid = bool(croniter.is_valid(expression))
    except Exception:  # croniter raises its own errors for some inputs instead of answering False
        valid = False
    if not valid:
        return f"{_shown(expression)} has a value out of range; expected {example}"
    return None
