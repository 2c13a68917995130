from tests.conftest import Stack, wait_for


def test_one_message_round_trip(stack: Stack) -> None:
    response = stack.say("c1", "hello")
    assert response.status_code == 200, response.text
    texts = wait_for(lambda: stack.receiver.texts("c1"), what="a reply")
    assert texts == ["Echo #1: hello"]
