from lanchat.cli import main

main()
