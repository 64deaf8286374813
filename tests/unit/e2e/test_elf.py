from imagelab.elf import read_elf_dependencies

from tests.unit.e2e.elf_fixture import make_elf64, make_static_elf64


def test_read_elf_dependencies_returns_loader_and_needed_sonames_in_order() -> None:
    data = make_elf64("/lib64/ld-linux-x86-64.so.2", ["libpcre2-8.so.0", "libc.so.6"])

    elf = read_elf_dependencies(data)

    assert elf is not None
    assert elf.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert elf.needed == ("libpcre2-8.so.0", "libc.so.6")


def test_read_elf_dependencies_of_a_shared_library_has_no_loader() -> None:
    elf = read_elf_dependencies(make_elf64(None, ["libc.so.6"]))

    assert elf is not None
    assert elf.interpreter is None
    assert elf.needed == ("libc.so.6",)


def test_read_elf_dependencies_of_a_static_binary_needs_nothing() -> None:
    elf = read_elf_dependencies(make_static_elf64())

    assert elf is not None
    assert (elf.interpreter, elf.needed) == (None, ())


def test_read_elf_dependencies_of_a_script_is_none() -> None:
    assert read_elf_dependencies(b"#!/bin/sh\necho hi\n") is None
