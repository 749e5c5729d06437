from modelbuild.cli import run

run()
