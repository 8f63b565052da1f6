"""(being written) the Trainer."""
