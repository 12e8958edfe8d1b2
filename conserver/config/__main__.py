"""``python -m conserver.config > conf/conserver.env.example``: the example, from the table."""
import sys

from conserver.config import env_example

sys.stdout.write(env_example())
