"""`python -m spmbench.toy`: the same as `spmbench toy train`, without the CLI extra."""

from spmbench.toy.cli import main


main()
