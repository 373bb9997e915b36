// Connect to SSE endpoint
const eventSource = new EventSource('/api/v1/sse/events?event_types=file_change,auto_commit&project_id=my-project');

eventSource.onmessage = (event) => {
  const data = JSON.parse(event.data);
  console.log('SSE Event:', data);
  
  switch(data.type) {
    case 'file_change':
      handleFileChange(data.data);
      break;
    case 'auto_commit':
      handleAutoCommit(data.data);
      break;
  }
};

eventSource.onerror = (error) => {
  console.error('SSE Error:', error);
  // SSE automatically reconnects
};
