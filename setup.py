"""The build step setup.cfg cannot say: the config groups live at the top of the checkout (conf/), and the wheel
carries them as leukemia/conf/, so that an installed ``python -m leukemia`` composes the same groups anywhere.
Machine-local settings (conf/local/) stay on the machine. An editable install reads conf/ in the checkout."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path("conf")


class BuildWithConf(build_py):
    def shipped(self) -> list[tuple[Path, Path]]:
        """(source, place in the build) of every YAML of conf/ but the machine-local ones."""
        return [(path, Path(self.build_lib, "leukemia", "conf", path.relative_to(CONF)))
                for path in sorted(CONF.rglob("*.yaml")) if path.relative_to(CONF).parts[0] != "local"]  # fmt: skip

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, target in self.shipped():
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [str(target) for _, target in self.shipped()]


setup(cmdclass={"build_py": BuildWithConf})
