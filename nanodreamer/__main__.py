from nanodreamer.cli import main

main()
