import sys

from cri_py.shim.main import main

sys.exit(main(sys.argv[1:]))
