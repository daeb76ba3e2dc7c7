from phxqd.daemon import main

main()
