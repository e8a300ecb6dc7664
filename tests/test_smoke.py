from tests.conftest import Api, make_show


async def test_book_and_persist(http: Api, pg, drain) -> None:
    show = await make_show(pg, rows=2, seats_per_row=3)
    token = await http.user()
    status, body = await http.post(
        f"/api/shows/{show}/book/", token=token, json={"seat_number": " b3 "}
    )
    assert status == 201, body
    assert body["seat_number"] == "B3"
    assert body["show"]["available_seats"] == 5
    await drain()
    row = await pg.fetchrow("SELECT * FROM bookings WHERE id = $1", body["id"])
    assert row["status"] == "booked" and row["seat_number"] == "B3"
