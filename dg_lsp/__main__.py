from dg_lsp.cli import main
import sys
sys.exit(main())
