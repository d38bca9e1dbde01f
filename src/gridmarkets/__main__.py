from gridmarkets.cli import main

main()
