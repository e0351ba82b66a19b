"""`python -m gemma_mtp_mlx ...` is `gemma-mtp ...`."""

from .cli import main

if __name__ == "__main__":
    main()
