"""A LangChain chain that translates a sentence, invoked and streamed."""

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

prompt = ChatPromptTemplate.from_messages([("system", "Translate the user's text to French."), ("user", "{text}")])
chain = prompt | ChatOpenAI(model="gpt-4o-mini", temperature=0) | StrOutputParser()

print("translation:", chain.invoke({"text": "Good morning"}))
print("streamed:", "".join(chain.stream({"text": "See you tomorrow"})))
