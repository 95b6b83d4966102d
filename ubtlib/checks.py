"""Parameter checks shared by every config: fail early, name the value and what is accepted."""


def check_range(name, value, low, high):
    """Raise ValueError unless low <= value <= high (names the value and the range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number in [{low}, {high}]")
    if not (low <= value <= high):
        raise ValueError(f"{name}={value!r} is out of range: accepted {low} <= {name} <= {high}")


def check_choice(name, value, accepted):
    """Raise ValueError unless value is one of `accepted` (names both)."""
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not accepted: choose one of {', '.join(map(repr, accepted))}")
