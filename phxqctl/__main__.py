from phxqctl.cli import main

main()
