from unitkit.cli import main

main()
