"""Tiny hand-made ELF files, so the ELF reader is tested without depending on the host's."""

import struct


def make_elf64(interpreter: str | None, needed: list[str]) -> bytes:
    """A little-endian ELF64 with PT_INTERP (when given), one PT_LOAD mapping the whole file
    at vaddr 0x400000 and a PT_DYNAMIC whose DT_NEEDED entries name `needed`."""
    base = 0x400000
    header_size, phdr_size = 64, 56
    phdrs = [
        kind for kind, wanted in ((3, interpreter is not None), (1, True), (2, True)) if wanted
    ]
    offset = header_size + phdr_size * len(phdrs)

    interp_bytes = (interpreter or "").encode() + b"\0"
    interp_offset = offset
    offset += len(interp_bytes) if interpreter is not None else 0

    strtab = b"\0"
    name_offsets = []
    for name in needed:
        name_offsets.append(len(strtab))
        strtab += name.encode() + b"\0"
    strtab_offset = offset
    offset += len(strtab)

    entries = [(1, name_offset) for name_offset in name_offsets]
    entries += [(5, base + strtab_offset), (0, 0)]
    dynamic = b"".join(struct.pack("<qQ", tag, value) for tag, value in entries)
    dynamic_offset = offset
    total = offset + len(dynamic)

    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, base, header_size, 0, 0, header_size, phdr_size, len(phdrs),
        64, 0, 0,
    )  # fmt: skip
    program_headers = b""
    for kind in phdrs:
        if kind == 3:
            fields = (
                3,
                4,
                interp_offset,
                base + interp_offset,
                0,
                len(interp_bytes),
                len(interp_bytes),
                1,
            )
        elif kind == 1:
            fields = (1, 5, 0, base, 0, total, total, 0x1000)
        else:
            fields = (2, 6, dynamic_offset, base + dynamic_offset, 0, len(dynamic), len(dynamic), 8)
        program_headers += struct.pack("<IIQQQQQQ", *fields)
    body = interp_bytes if interpreter is not None else b""
    return header + program_headers + body + strtab + dynamic


def make_static_elf64() -> bytes:
    """An ELF64 with no program headers at all: nothing to load, nothing needed."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 0, 64, 0, 0)
