from fashiontag.cli import app

app(prog_name="fashiontag")
