import sys

sys.exit("refusing to load")
