from imagelab.debian import Candidate, parse_depends


def test_parse_depends_takes_first_alternative_without_versions_or_arch() -> None:
    field = (
        "libc6 (>= 2.34), libssl3 (>= 3.0.0) | libssl1.1, perl:any, debconf (>= 0.5) | debconf-2.0"
    )

    assert parse_depends(field) == ["libc6", "libssl3", "perl", "debconf"]


def test_library_packages_are_found_by_section_not_name() -> None:
    assert Candidate("1:1.2.13", "amd64", "libs").is_library
    assert Candidate("1.0", "amd64", "oldlibs").is_library
    assert not Candidate("1.22.1", "all", "httpd").is_library
