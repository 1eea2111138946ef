from fraudkit.cli import main

main()
