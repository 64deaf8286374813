"""The cgroup v2 device program: golden bytes per rule list (`golden/device_filter/<case>.rules
.json` in, `<case>.program.txt` out: one instruction a line, hex of its 8 bytes then fields;
regenerate with `CRI_PY_REGENERATE_GOLDEN=1`), and what the program answers, run by a small
interpreter of the instructions it uses (the kernel's verifier and a real cgroup are the
integration test's)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from cri_py.oci import device_filter as f
from cri_py.spec.devices import DEFAULT_RULES

GOLDEN = Path(__file__).parent / "golden" / "device_filter"
REGENERATE = os.environ.get("CRI_PY_REGENERATE_GOLDEN") == "1"
CASES = sorted(p.name.removesuffix(".rules.json") for p in GOLDEN.glob("*.rules.json"))
R, W, M = f.BPF_DEVCG_ACC_READ, f.BPF_DEVCG_ACC_WRITE, f.BPF_DEVCG_ACC_MKNOD
CHAR, BLOCK = f.BPF_DEVCG_DEV_CHAR, f.BPF_DEVCG_DEV_BLOCK


def listing(program: list[f.Insn]) -> str:
    return "".join(
        f"{insn.encode().hex()}  code={insn.code:#04x} dst=r{insn.dst} src=r{insn.src} "
        f"off={insn.off} imm={insn.imm}\n"
        for insn in program
    )


def run(program: bytes, kind: int, access: int, major: int, minor: int) -> int:
    """Executes the program on one request (only the opcodes device_program emits)."""
    context = struct.pack("<III", kind | access << 16, major, minor)
    regs = [0] * 11
    pc = 0
    for _ in range(10_000):
        code, registers, off, imm = struct.unpack_from("<BBhi", program, pc * 8)
        dst, src = registers & 0xF, registers >> 4
        pc += 1
        if code == f.LDX_MEM_W:
            assert src == 1, "loads only from the context"
            regs[dst] = struct.unpack_from("<I", context, off)[0]
        elif code == f.ALU64_AND_K:
            regs[dst] &= imm & 0xFFFFFFFFFFFFFFFF
        elif code == f.ALU64_RSH_K:
            regs[dst] >>= imm
        elif code == f.ALU64_MOV_K:
            regs[dst] = imm & 0xFFFFFFFFFFFFFFFF
        elif code == f.ALU64_MOV_X:
            regs[dst] = regs[src]
        elif code == f.JMP_JNE_K:
            pc += off if regs[dst] != imm else 0
        elif code == f.JMP_JEQ_K:
            pc += off if regs[dst] == imm else 0
        elif code == f.JMP_EXIT:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("the program did not exit")


def decide(rules: list[dict[str, Any]], kind: int, access: int, major: int, minor: int) -> int:
    return run(f.encode(f.device_program(rules)), kind, access, major, minor)


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 3


@pytest.mark.parametrize("case", CASES)
def test_program_matches_golden(case: str) -> None:
    rules = json.loads((GOLDEN / f"{case}.rules.json").read_text())
    actual = listing(f.device_program(rules))
    expected = GOLDEN / f"{case}.program.txt"
    if REGENERATE:
        expected.write_text(actual)
    assert actual == expected.read_text()


def test_default_rules_allow_the_standard_nodes_and_deny_the_rest() -> None:
    rules = list(DEFAULT_RULES)
    assert decide(rules, CHAR, R | W, 1, 3) == 1  # /dev/null
    assert decide(rules, CHAR, R, 136, 7) == 1  # /dev/pts/7
    assert decide(rules, CHAR, R, 1, 11) == 0  # /dev/kmsg
    assert decide(rules, BLOCK, R, 253, 0) == 0  # a disk
    assert decide(rules, BLOCK, M, 253, 0) == 1  # mknod is allowed, opening is not
    assert decide(rules, CHAR, M | R, 1, 11) == 0


def test_later_rules_win_and_access_must_be_granted_in_full() -> None:
    rules = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "r"},
    ]
    assert decide(rules, CHAR, R, 10, 200) == 1
    assert decide(rules, CHAR, R | W, 10, 200) == 0  # w not granted
    rules.append({"allow": False, "type": "c", "major": 10, "access": "w"})
    assert decide(rules, CHAR, R, 10, 200) == 1  # the deny names w only
    rules.append({"allow": False, "type": "c", "major": 10, "minor": -1, "access": "r"})
    assert decide(rules, CHAR, R, 10, 200) == 0  # any minor of major 10


def test_allow_all_and_no_rules() -> None:
    assert decide([{"allow": True, "access": "rwm"}], BLOCK, R | W, 8, 0) == 1
    assert decide([], CHAR, R, 1, 3) == 0


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="not a, b or c"):
        f.device_program([{"allow": True, "type": "x"}])
    with pytest.raises(ValueError, match="not some of 'rwm'"):
        f.device_program([{"allow": True, "type": "c", "access": "rx"}])
