"""Copies of the example service with what a release gate must catch (a module of its own: the host
suite and the controller-only suite share it)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "hello-service"

#: clippy::ptr_arg, and nothing rustc itself warns about (the finding must be clippy's)
CLIPPY_WARNING = """
#[allow(dead_code)]
fn gate_probe(values: &Vec<u8>) -> usize {
    values.len()
}
"""

FAILING_TEST = """
#[cfg(test)]
mod gate_probe_tests {
    #[test]
    fn release_gate_probe() {
        assert_eq!(1 + 1, 3, "the release gate must see this test fail");
    }
}
"""

HELPER_MANIFEST = """[package]
name = "gate-helper"
version = "0.4.2"
edition = "2021"
publish = false

[dependencies]
"""


def crate_copy(dest: Path, *, clippy_warning: bool = False, failing_test: bool = False,
               path_dependency: bool = False) -> Path:
    """The example service copied to `dest` (no target/), with the chosen defect or dependency."""
    dest.mkdir(parents=True)
    for name in ("Cargo.toml", "Cargo.lock"):
        shutil.copy2(EXAMPLE / name, dest / name)
    shutil.copytree(EXAMPLE / "src", dest / "src")
    main = dest / "src" / "main.rs"
    if clippy_warning:
        main.write_text(main.read_text() + CLIPPY_WARNING)
    if failing_test:
        main.write_text(main.read_text() + FAILING_TEST)
    if path_dependency:
        helper = dest.parent / "gate-helper"
        (helper / "src").mkdir(parents=True)
        (helper / "Cargo.toml").write_text(HELPER_MANIFEST)
        (helper / "src" / "lib.rs").write_text("pub fn answer() -> u32 {\n    42\n}\n")
        manifest = dest / "Cargo.toml"
        manifest.write_text(manifest.read_text().replace(
            "[dependencies]\n", '[dependencies]\ngate-helper = { path = "../gate-helper" }\n'))
    return dest
