"""The machine a benchmark ran on, for the table's header."""

from pneumonia.machine import describe

__all__ = ["describe"]
