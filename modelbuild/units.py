"""Byte counts for people: decimal units, as disks and `ls -h --si` count."""


def human_size(n: float, digits: int = 1) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1000
    return f"{n} B"
