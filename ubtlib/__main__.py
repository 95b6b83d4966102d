from ubtlib.cli import main

main()
