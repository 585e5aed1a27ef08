// The AI SDK client as a browser frontend uses it, against bookrag's POST /api/chat (run by tests/test_chat_js.py).
//
//   node tests/js/chat_client.mjs <base-url> <question> [follow-up]
//
// DefaultChatTransport sends the question as useChat would (a UI message with a text part, the reader's selection in
// its metadata); readUIMessageStream folds the answer's UI message stream into an assistant UIMessage. With a
// follow-up, the whole conversation (question, that answer, follow-up) is sent again, as useChat does. Prints JSON:
// {"turns": [{"message": UIMessage, "chunkTypes": [...], "statuses": [...], "errors": [...]}, ...]}; a turn whose
// request the transport refuses (a non-2xx response: it throws) is {"thrown": <the error's message>} and ends the run.
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [baseUrl, question, followUp] = process.argv.slice(2);
if (!baseUrl || !question) {
  console.error("usage: node chat_client.mjs <base-url> <question> [follow-up]");
  process.exit(2);
}

const transport = new DefaultChatTransport({ api: `${baseUrl}/api/chat` });

async function ask(messages) {
  let stream;
  try {
    stream = await transport.sendMessages({
      chatId: "chat-js-test",
      messages,
      trigger: "submit-message",
      messageId: undefined,
      abortSignal: AbortSignal.timeout(60_000),
    });
  } catch (error) {
    return { thrown: String(error?.message ?? error) };
  }
  // One branch is folded into the message (as useChat does); the other records every chunk, transient ones too.
  const [forMessage, forLog] = stream.tee();
  const chunkTypes = [];
  const statuses = [];
  const logged = (async () => {
    for await (const chunk of forLog) {
      chunkTypes.push(chunk.type);
      if (chunk.type === "data-status") statuses.push(chunk.data.stage);
    }
  })();
  const errors = [];
  let message;
  for await (const state of readUIMessageStream({ stream: forMessage, onError: (e) => errors.push(String(e)) })) {
    message = state;
  }
  await logged;
  return { message, chunkTypes, statuses, errors };
}

function userMessage(id, text, metadata) {
  return { id, role: "user", parts: [{ type: "text", text }], ...(metadata ? { metadata } : {}) };
}

const first = userMessage("u1", question, { selectedText: "Young fruit trees need deep, infrequent watering." });
const turns = [await ask([first])];
if (followUp && !("thrown" in turns[0])) {
  turns.push(await ask([first, turns[0].message, userMessage("u2", followUp)]));
}
console.log(JSON.stringify({ turns }));
