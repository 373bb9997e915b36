from support import WsClient, file_change, publish


async def test_subscribe_and_receive(port, http):
    ws, established = await WsClient.connected(port)
    confirmed = await ws.subscribe(event_types=["file_change"], project_id="my-project")
    assert confirmed["recovered"] is True
    response = await publish(http, port, file_change())
    assert response.code == 202, response.body
    [event] = await ws.events(1)
    assert event["type"] == "file_change"
    ws.close()
