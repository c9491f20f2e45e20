from jukebot.cli import main

main(prog_name="jukebot")
