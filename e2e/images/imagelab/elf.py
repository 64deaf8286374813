"""ELF headers: the dynamic loader (PT_INTERP) and shared libraries (DT_NEEDED) a binary
needs. Pure: bytes in, names out."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from imagelab.environment import BuildError

PT_DYNAMIC, PT_INTERP, PT_LOAD = 2, 3, 1


DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5


@dataclass(frozen=True)
class ElfDependencies:
    interpreter: str | None
    needed: tuple[str, ...]


def read_elf_dependencies(data: bytes) -> ElfDependencies | None:
    """PT_INTERP and the DT_NEEDED sonames of an ELF file; None when data is not ELF.

    Reading the headers ourselves (rather than running ldd) works on files from packages that
    are not installed, and never runs the binary."""
    if data[:4] != b"\x7fELF":
        return None
    endian = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # ELFCLASS64
        (phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
        phdr_fmt, dyn_fmt = "IIQQQQQQ", "qQ"

        def phdr(offset: int) -> tuple[int, int, int, int]:
            p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from(
                endian + phdr_fmt, data, offset
            )
            return p_type, p_offset, p_vaddr, p_filesz
    elif data[4] == 1:  # ELFCLASS32
        (phoff,) = struct.unpack_from(endian + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x2A)
        phdr_fmt, dyn_fmt = "IIIIIIII", "iI"

        def phdr(offset: int) -> tuple[int, int, int, int]:
            p_type, p_offset, p_vaddr, _, p_filesz, _, _, _ = struct.unpack_from(
                endian + phdr_fmt, data, offset
            )
            return p_type, p_offset, p_vaddr, p_filesz
    else:
        raise BuildError(f"unknown ELF class {data[4]}")

    interpreter = None
    dynamic: tuple[int, int] | None = None
    loads: list[tuple[int, int, int]] = []
    for number in range(phnum):
        p_type, p_offset, p_vaddr, p_filesz = phdr(phoff + number * phentsize)
        if p_type == PT_INTERP:
            interpreter = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
    if dynamic is None:
        return ElfDependencies(interpreter, ())  # statically linked

    needed_offsets: list[int] = []
    strtab_vaddr = None
    entry_size = struct.calcsize(endian + dyn_fmt)
    for offset in range(dynamic[0], dynamic[0] + dynamic[1], entry_size):
        tag, value = struct.unpack_from(endian + dyn_fmt, data, offset)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed_offsets.append(value)
        elif tag == DT_STRTAB:
            strtab_vaddr = value
    if strtab_vaddr is None:
        return ElfDependencies(interpreter, ())
    # DT_STRTAB holds a virtual address; the PT_LOAD segment containing it maps it to a file offset.
    for vaddr, file_offset, size in loads:
        if vaddr <= strtab_vaddr < vaddr + size:
            strtab = strtab_vaddr - vaddr + file_offset
            break
    else:
        raise BuildError("ELF string table outside every loaded segment")
    needed = tuple(
        data[strtab + name : data.index(b"\0", strtab + name)].decode() for name in needed_offsets
    )
    return ElfDependencies(interpreter, needed)
