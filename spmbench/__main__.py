"""`python -m spmbench`, which is how launchers start it: `accelerate launch -m spmbench run ...`."""

from spmbench.cli import main


main()
